// kangaroo-runtime: the runc-compatible OCI runtime binary. All logic lives
// in KangarooRuntime; this file only hands argv over and exits.
import KangarooRuntime
#if canImport(Glibc)
import Glibc
#endif

exit(CLI.main(CommandLine.arguments))
