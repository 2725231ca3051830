"""Where images come from: dataset adapters that turn a folder into a manifest of subjects
(:mod:`.datasets`), the embedded demo data, raw and point-file imports, synthetic displacement
fields (:mod:`.synth`), pairs with a known true deformation (:mod:`.truth`) and landmark detection
(:mod:`.landmarks`)."""
