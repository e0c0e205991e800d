/* main.c — moetool's entry point: dispatches verbs. */
#include "moetool/mt_runtime.h"
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "moetool: under construction\n");
    return 2;
}
