#ifndef CKANGAROO_H
#define CKANGAROO_H
#endif
