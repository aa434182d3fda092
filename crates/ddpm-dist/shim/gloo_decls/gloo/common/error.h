// Declaration-only stand-in for <gloo/common/error.h> (see ../../README.md): the header names none
// of its contents.
#pragma once
