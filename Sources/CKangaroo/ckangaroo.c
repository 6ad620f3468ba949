#include "ckangaroo.h"
