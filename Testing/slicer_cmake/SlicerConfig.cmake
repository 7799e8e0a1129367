# Stand-in for Slicer's SlicerConfig.cmake (found by find_package(Slicer) with -DSlicer_DIR=<this
# folder>), for Testing/test_installed_layout.py. It sets what the extension's CMake uses with the
# values Slicer 5.10 gives them (CMake/SlicerDirectories.cmake at v5.10.0:
# Slicer_QTSCRIPTEDMODULES_LIB_DIR = lib/Slicer-X.Y/qt-scripted-modules).
set(Slicer_VERSION_MAJOR 5)
set(Slicer_VERSION_MINOR 10)
set(Slicer_USE_PYTHONQT ON)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/ExtensionNoOp.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/ExtensionNoOp.cmake")
set(Slicer_FOUND TRUE)
