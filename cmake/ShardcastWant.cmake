# shardcast_want(OPTION OUT): OUT = the AUTO|ON|OFF option OPTION, upper-cased; any other value fails the configure.
function(shardcast_want option out)
  string(TOUPPER "${${option}}" value)
  if(NOT value MATCHES "^(AUTO|ON|OFF)$")
    message(FATAL_ERROR "${option} must be AUTO, ON or OFF, not '${${option}}'")
  endif()
  set(${out} ${value} PARENT_SCOPE)
endfunction()
