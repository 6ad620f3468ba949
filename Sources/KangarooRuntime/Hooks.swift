import CKangaroo

/// Runs OCI hooks in the runtime's namespaces (prestart, createRuntime,
/// poststart, poststop); createContainer and startContainer hooks run inside
/// the container, from the init (see CKangaroo).
enum Hooks {
    static func run(_ hook: Spec.Hook, state: String) throws(RuntimeError) {
        let arena = CArena()
        var h = Runtime.cHook(hook, arena: arena)
        let rc = state.withCString { s in withUnsafePointer(to: &h) { kr_run_hook($0, s) } }
        if rc == -110 /* ETIMEDOUT */ {
            throw RuntimeError(.hook, "hook \(hook.path) timed out after \(hook.timeout ?? 0)s")
        }
        if rc < 0 { throw RuntimeError(.hook, "hook \(hook.path) could not run", errno: -rc) }
        if kr_wifexited(rc) == 0 || kr_wexitstatus(rc) != 0 {
            throw RuntimeError(.hook, "hook \(hook.path) failed with exit status \(Runtime.exitCode(rc))")
        }
    }
}
