// Everything a user of the shardcast C++ API includes.
#pragma once

#include "core/error.h"
#include "worker/session.h"
