// Declaration-only stand-in for <gloo/algorithm.h> (see ../README.md).
#pragma once
#include <gloo/context.h>
