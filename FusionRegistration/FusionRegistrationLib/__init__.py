"""FusionRegistration's scene code: fusion overlays, colour maps, volume rendering, metric
tables and plots (:mod:`FusionRegistrationLib.fusion_scene`), and the extension's sample data
in Slicer's Sample Data module (:mod:`FusionRegistrationLib.sample_data`)."""
