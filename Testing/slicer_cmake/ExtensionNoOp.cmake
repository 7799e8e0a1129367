# Stand-in for Slicer_EXTENSION_GENERATE_CONFIG and Slicer_EXTENSION_CPACK: packaging is not tested.
