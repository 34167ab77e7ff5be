#include "harness/config/config.hpp"
int main(int argc, char** argv) { return 0; }
