# Stand-ins for the Slicer macros the extension calls, doing what Slicer 5.10 and CTK do with the
# files (CMake/SlicerMacroBuildScriptedModule.cmake at Slicer v5.10.0, which calls
# CMake/ctkMacroCompilePythonScript.cmake of commontk/CTK):
# - every SCRIPTS and RESOURCES entry must exist (relative to the current source folder);
# - a SCRIPTS entry whose extension does not match "py" gets ".py" appended;
# - each entry is copied, relative path kept, into ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR},
#   and that folder's contents are installed into ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}.
# Tests are registered with add_test under the names Slicer gives them (py_<prefix><script name>),
# so `ctest -N` lists them.
enable_testing()
set(BUILD_TESTING ON)

macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): \"${MY_SLICER_UNPARSED_ARGUMENTS}\"")
  endif()
  set(_destination "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
  set(_copied)
  foreach(_kind SCRIPTS RESOURCES)
    foreach(_file ${MY_SLICER_${_kind}})
      if(_kind STREQUAL "SCRIPTS")
        get_filename_component(_ext ${_file} EXT)
        if(NOT "${_ext}" MATCHES "py")
          set(_file "${_file}.py")
        endif()
      endif()
      set(_src "${CMAKE_CURRENT_SOURCE_DIR}/${_file}")
      if(NOT EXISTS "${_src}")
        message(FATAL_ERROR "slicerMacroBuildScriptedModule(${_kind}) given nonexistent file or directory '${_file}'")
      endif()
      add_custom_command(OUTPUT "${_destination}/${_file}" DEPENDS "${_src}"
        COMMAND ${CMAKE_COMMAND} -E copy "${_src}" "${_destination}/${_file}")
      list(APPEND _copied "${_destination}/${_file}")
    endforeach()
  endforeach()
  add_custom_target(Copy${MY_SLICER_NAME}PythonFiles ALL DEPENDS ${_copied})
  install(DIRECTORY "${_destination}/" DESTINATION "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
    USE_SOURCE_PERMISSIONS)
  if(MY_SLICER_WITH_GENERIC_TESTS)
    set(_generic_scripts)
    SlicerMacroConfigureGenericPythonModuleTests("${MY_SLICER_NAME}" _generic_scripts)
    foreach(_script ${_generic_scripts})
      slicer_add_python_unittest(SCRIPT ${_script} TESTNAME_PREFIX nomainwindow_)
    endforeach()
  endif()
endmacro()

# Slicer configures qSlicerModuleGenericTest.py.in per module name; the test it makes looks the
# module up as slicer.modules.<name in lower case>. The stand-in writes that one fact.
macro(SlicerMacroConfigureGenericPythonModuleTests MODULENAMES TEST_SCRIPTS_OUTPUT_VAR)
  foreach(MODULENAME ${MODULENAMES})
    string(TOLOWER ${MODULENAME} MODULENAME_LC)
    set(_script "${CMAKE_CURRENT_BINARY_DIR}/qSlicer${MODULENAME}ModuleGenericTest.py")
    file(WRITE "${_script}" "MODULE_NAME = '${MODULENAME}'\nSLICER_MODULE = 'slicer.modules.${MODULENAME_LC}'\n")
    get_filename_component(_name ${_script} NAME)
    list(APPEND ${TEST_SCRIPTS_OUTPUT_VAR} ${_name})
  endforeach()
endmacro()

macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "TESTNAME_PREFIX;SCRIPT" "SLICER_ARGS" ${ARGN})
  get_filename_component(_test_name ${MY_SCRIPT} NAME_WE)
  add_test(NAME py_${MY_TESTNAME_PREFIX}${_test_name} COMMAND ${CMAKE_COMMAND} -E echo ${MY_SCRIPT})
endmacro()
