// KangarooRuntime: see docs/ARCHITECTURE.md for this module's purpose.
