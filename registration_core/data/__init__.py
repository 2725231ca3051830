"""Where images come from: dataset adapters that turn a folder into a manifest of subjects
(:mod:`.adapters`), the embedded demo data (:mod:`.demo`), raw and point-file imports
(:mod:`.imports`), synthetic displacement fields (:mod:`.synth`), pairs with a known true
deformation (:mod:`.truth`) and landmark detection (:mod:`.landmarks`)."""
