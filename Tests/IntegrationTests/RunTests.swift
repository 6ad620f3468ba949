import Foundation
import KangarooTestSupport
import Testing

/// `kangaroo run/ps/stop/rm` on the sample image, each test with its own
/// store, state directory, runtime root and lazy mount run directory under
/// /tmp/kangaroo-test-*.
final class RunFixture {
    let tmp: TempDir
    let env: [String: String]

    /// `store`: where the converted sample goes (the store `run` uses by default).
    init(store: String = "store") throws {
        tmp = try TempDir("run")
        env = ["KANGAROO_STORE": tmp.sub("store"), "KANGAROO_STATE_DIR": tmp.sub("state"),
               "KANGAROO_RUNTIME_ROOT": tmp.sub("runtime"), "KANGAROO_RUN_DIR": tmp.sub("lazy-run")]
        try run("bash", [TestEnv.repoRoot + "/scripts/testimages/build-all.sh", "--sample-only"], check: true)
        try kangaroo(["image", "convert", "--quiet", "oci:\(TestEnv.images)/sample:latest", "sample"], store: tmp.sub(store))
    }

    /// `kangaroo ARGS` with this fixture's environment (the store comes from
    /// KANGAROO_STORE: trailing flags would belong to the container's command).
    @discardableResult
    func k(_ args: [String], check: Bool = true, sourceLocation: SourceLocation = #_sourceLocation) throws -> CommandResult {
        try run(TestEnv.kangaroo, args, env: env, check: check, sourceLocation: sourceLocation)
    }

    /// Mount points below the fixture's directory.
    func mounts() -> [String] {
        let text = procText("/proc/self/mountinfo") ?? ""
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            return f.count > 4 && f[4].hasPrefix(tmp.path + "/") ? String(f[4]) : nil
        }
    }

    /// Mount point -> (file system type, super options) for mounts below the fixture's directory.
    func mountTable() -> [String: (type: String, options: String)] {
        let text = procText("/proc/self/mountinfo") ?? ""
        var table: [String: (type: String, options: String)] = [:]
        for line in text.split(separator: "\n") {
            let halves = line.components(separatedBy: " - ")
            let f = halves[0].split(separator: " "), g = halves.count > 1 ? halves[1].split(separator: " ") : []
            guard f.count > 4, f[4].hasPrefix(tmp.path + "/"), g.count > 2 else { continue }
            table[String(f[4])] = (String(g[0]), String(g[2]))
        }
        return table
    }

    /// The lazy mount points of images (state/images/<key>/lazy) that are mounted.
    func lazyMounts() -> [String: String] {
        mountTable().filter { $0.key.hasPrefix(tmp.sub("state/images/")) && $0.key.hasSuffix("/lazy") }.mapValues(\.type)
    }

    /// The overlay lowerdir of a container's rootfs.
    func lowerDir(_ id: String) -> String? {
        guard let options = mountTable()[tmp.sub("state/containers/\(id)/rootfs")]?.options else { return nil }
        return options.split(separator: ",").first { $0.hasPrefix("lowerdir=") }.map { String($0.dropFirst(9)) }
    }

    /// Processes serving a lazy mount below the fixture's directory (`kangaroo image mount`).
    func mountDaemons() -> [Int32] {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap(Int32.init) ?? []
        return pids.filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return args.count > 2 && args[1] == "image" && args[2] == "mount" && args.contains { $0.hasPrefix(tmp.path + "/") }
        }
    }

    /// The lazy mounts' state files (`<id>.json`, `<id>.stats.json`) in KANGAROO_RUN_DIR.
    func lazyStateFiles() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: tmp.sub("lazy-run"))) ?? []).filter { $0.hasSuffix(".json") }
    }

    func containerDirectories() -> [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: tmp.sub("state/containers"))) ?? []
    }

    func expectNothingLeft(_ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(mounts().isEmpty, "\(what): mounts left: \(mounts())", sourceLocation: sourceLocation)
        #expect(containerDirectories().isEmpty, "\(what): container dirs left: \(containerDirectories())",
                sourceLocation: sourceLocation)
        #expect(mountDaemons().isEmpty, "\(what): mount daemons left: \(mountDaemons())", sourceLocation: sourceLocation)
        #expect(lazyStateFiles().isEmpty, "\(what): lazy mount state left: \(lazyStateFiles())", sourceLocation: sourceLocation)
    }

    deinit {
        // a failed test must not leave containers (processes, cgroups) or mount daemons behind
        if let ids = try? run(TestEnv.kangaroo, ["ps", "-q"], env: env).stdout.split(separator: "\n") {
            for id in ids { _ = try? run(TestEnv.kangaroo, ["rm", "-f", String(id)], env: env) }
        }
        for mnt in lazyMounts().keys { _ = try? run(TestEnv.kangaroo, ["image", "umount", mnt], env: env) }
        for pid in mountDaemons() { kill(pid, SIGKILL) }
    }
}

@Suite("kangaroo run", .serialized, .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct RunTests {
    @Test("run --rm prints the sample's greeting and leaves nothing behind")
    func runRemove() throws {
        let f = try RunFixture()
        let r = try f.k(["run", "--rm", "--time", "--name", "sample", "sample"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("hello from sample"), "output: \(r.output)")
        #expect(r.stderr.contains("run took"), "no timing: \(r.stderr)")
        f.expectNothingLeft("after run --rm")
        // the materialized image stays cached for the next run
        let images = try FileManager.default.contentsOfDirectory(atPath: f.tmp.sub("state/images"))
        #expect(images.count == 1)
        let again = try f.k(["run", "--rm", "--name", "again", "sample"])
        #expect(again.stdout.contains("hello from again"))
        f.expectNothingLeft("after the second run --rm")
    }

    @Test("the container's exit status is run's", arguments: [0, 7, 42])
    func exitCode(_ code: Int) throws {
        let f = try RunFixture()
        let r = try f.k(["run", "--rm", "sample", "/bin/sh", "-c", "exit \(code)"], check: false)
        #expect(r.status == Int32(code), "output: \(r.output)")
        f.expectNothingLeft("after exit \(code)")
    }

    @Test("a container without --rm is listed as exited until rm")
    func exitedThenRemoved() throws {
        let f = try RunFixture()
        let r = try f.k(["run", "--name", "once", "sample", "/bin/sh", "-c", "echo written > /tmp/x; exit 3"], check: false)
        #expect(r.status == 3)
        let ps = try f.k(["ps"]).stdout
        #expect(ps.contains("once") && ps.contains("exited (3)"), "ps: \(ps)")
        #expect(f.mounts().allSatisfy { !$0.contains("/containers/") }, "overlay still mounted: \(f.mounts())")
        try f.k(["rm", "once"])
        #expect(try !f.k(["ps"]).stdout.contains("once"))
        f.expectNothingLeft("after rm")
    }

    @Test("-d, ps, stop (SIGKILL after the timeout), rm")
    func detached() throws {
        let f = try RunFixture()
        let r = try f.k(["run", "-d", "--name", "bg", "--memory", "64M", "--cpus", "0.5", "sample", "/bin/sleep", "1000"])
        let id = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(id.count == 12, "no id printed: \(r.output)")
        let ps = try f.k(["ps"]).stdout
        #expect(ps.contains(id) && ps.contains("bg") && ps.contains("running"), "ps: \(ps)")
        // limits as the host sees them
        let memory = try String(contentsOfFile: "/sys/fs/cgroup/memory/kangaroo-\(id)/memory.limit_in_bytes", encoding: .utf8)
        #expect(memory.trimmingCharacters(in: .whitespacesAndNewlines) == "67108864")
        let quota = try String(contentsOfFile: "/sys/fs/cgroup/cpu/kangaroo-\(id)/cpu.cfs_quota_us", encoding: .utf8)
        #expect(quota.trimmingCharacters(in: .whitespacesAndNewlines) == "50000")
        // a running container is not removed without -f
        let refused = try f.k(["rm", "bg"], check: false)
        #expect(refused.status != 0 && refused.stderr.contains("running"))
        // sleep as pid 1 ignores SIGTERM: stop falls back to SIGKILL after -t
        let start = Date()
        try f.k(["stop", "-t", "1", "bg"])
        #expect(Date().timeIntervalSince(start) < 10)
        #expect(try f.k(["ps"]).stdout.contains("stopped"))
        try f.k(["rm", id.prefix(6).description])
        #expect(try f.k(["ps", "-q"]).stdout.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory/kangaroo-\(id)"))
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/cpu/kangaroo-\(id)"))
        f.expectNothingLeft("after stop + rm")
    }

    @Test("--memory is the limit inside the container's cgroup")
    func memoryInside() throws {
        let f = try RunFixture()
        let r = try f.k(["run", "--rm", "--memory", "64M", "sample", "/bin/cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"])
        #expect(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "67108864", "output: \(r.output)")
        f.expectNothingLeft("after --memory run")
    }

    @Test("rm -f removes a running container")
    func forceRemove() throws {
        let f = try RunFixture()
        let id = try f.k(["run", "-d", "sample", "/bin/sleep", "1000"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try f.k(["rm", "-f", id])
        #expect(try f.k(["ps", "-q"]).stdout.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory/kangaroo-\(id)"))
        f.expectNothingLeft("after rm -f")
    }

    @Test("a failing start leaves no mount, directory or container")
    func failureCleansUp() throws {
        let f = try RunFixture()
        let r = try f.k(["run", "--rm", "sample", "/does/not/exist"], check: false)
        #expect(r.status != 0)
        f.expectNothingLeft("after a missing command (foreground)")
        let d = try f.k(["run", "-d", "sample", "/does/not/exist"], check: false)
        #expect(d.status != 0 && d.stderr.contains("kangaroo"), "output: \(d.output)")
        #expect(try f.k(["ps", "-q"]).stdout.isEmpty)
        f.expectNothingLeft("after a missing command (-d)")
        let bad = try f.k(["run", "--rm", "no-such-image"], check: false)
        #expect(bad.status != 0)
        f.expectNothingLeft("after a missing image")
    }

    /// The sample converted into the fixture's `source` store and pushed to
    /// `registry`; `run` uses the empty store `store`.
    func pushSample(_ f: RunFixture, to registry: TestRegistry) throws -> String {
        let ref = "\(registry.host)/library/sample:kangaroo"
        try kangaroo(["image", "push", "--quiet", "sample", ref], store: f.tmp.sub("source"))
        return ref
    }

    @Test("a registry image runs from its lazy mount: no data blob pulled, the mount goes with the last container")
    func lazyRegistry() throws {
        let registry = try TestRegistry()
        let f = try RunFixture(store: "source")
        let ref = try pushSample(f, to: registry)

        // detached: the container's lower dir is the image's lazy FUSE mount, served by one daemon
        let d = try f.k(["run", "-d", "--name", "bg", ref, "/bin/sleep", "1000"])
        let id = d.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(id.count == 12, "no id printed: \(d.output)")
        let lazy = f.lazyMounts()
        #expect(lazy.count == 1 && lazy.values.first == "fuse.kangaroo", "lazy mounts: \(lazy)")
        #expect(f.lowerDir(id) == lazy.keys.first, "lowerdir \(f.lowerDir(id) ?? "-") is not the lazy mount \(lazy)")
        #expect(f.mountDaemons().count == 1, "daemons: \(f.mountDaemons())")
        #expect(f.lazyStateFiles().contains { !$0.hasSuffix(".stats.json") })
        try f.k(["rm", "-f", "bg"])
        f.expectNothingLeft("after rm of the only container")

        // foreground: the output is the image's
        let r = try f.k(["run", "--rm", "--time", "--name", "lazy", ref])
        #expect(r.status == 0)
        #expect(r.stdout.contains("hello from lazy on kangaroo: 202 data files"), "output: \(r.output)")
        #expect(r.stderr.contains("lazy mount"), "no lazy mount step in the timing: \(r.stderr)")
        f.expectNothingLeft("after run --rm")

        // the store holds the manifest, config and bootstrap, no data blob
        let blobs = Set(try FileManager.default.contentsOfDirectory(atPath: f.tmp.sub("store/blobs/sha256")))
        let manifests = blobs.compactMap { hex -> [String: Any]? in
            guard let data = FileManager.default.contents(atPath: f.tmp.sub("store/blobs/sha256/\(hex)")),
                  let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any], json["layers"] != nil else { return nil }
            return json
        }
        #expect(manifests.count == 1, "manifests in the store: \(manifests.count)")
        if let manifest = manifests.first, let layers = manifest["layers"] as? [[String: Any]],
           let config = manifest["config"] as? [String: Any] {
            #expect(layers.count > 1, "the sample has data blobs")
            let digest = { (d: [String: Any]) in String((d["digest"] as? String ?? "").dropFirst(7)) }
            #expect(blobs.subtracting([digest(config), digest(layers[0])]).count == 1,
                    "blobs beyond manifest, config and bootstrap: \(blobs.sorted())")
            for layer in layers.dropFirst() { #expect(!blobs.contains(digest(layer)), "data blob \(digest(layer)) was pulled") }
        }

        // failures after the lazy mount, or before it, leave nothing behind
        let missing = try f.k(["run", "--rm", ref, "/does/not/exist"], check: false)
        #expect(missing.status != 0)
        f.expectNothingLeft("after a missing command")
        let detachedMissing = try f.k(["run", "-d", ref, "/does/not/exist"], check: false)
        #expect(detachedMissing.status != 0)
        f.expectNothingLeft("after a missing command (-d)")
        let unknown = try f.k(["run", "--rm", "\(registry.host)/no/such:image"], check: false)
        #expect(unknown.status != 0)
        f.expectNothingLeft("after a missing image")
    }

    @Test("a second container of the image reuses its lazy mount; a dead mount is replaced")
    func lazyReuse() throws {
        let registry = try TestRegistry()
        let f = try RunFixture(store: "source")
        let ref = try pushSample(f, to: registry)

        let a = try f.k(["run", "-d", "--time", ref, "/bin/sleep", "1000"])
        let b = try f.k(["run", "-d", "--time", ref, "/bin/sleep", "1000"])
        let ida = a.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let idb = b.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!a.stderr.contains("reused") && b.stderr.contains("lazy mount (reused)"), "timing: \(a.stderr) \(b.stderr)")
        #expect(f.lazyMounts().count == 1, "lazy mounts: \(f.lazyMounts())")
        #expect(f.lowerDir(ida) != nil && f.lowerDir(ida) == f.lowerDir(idb))
        let daemons = f.mountDaemons()
        #expect(daemons.count == 1, "daemons: \(daemons)")
        // removing one container keeps the mount for the other
        try f.k(["rm", "-f", ida])
        #expect(f.lazyMounts().values.first == "fuse.kangaroo")
        #expect(f.mountDaemons() == daemons)
        #expect(try f.k(["ps"]).stdout.contains("running"))
        try f.k(["rm", "-f", idb])
        f.expectNothingLeft("after rm of both containers")

        // an exited container keeps the mount; after its daemon dies the next run mounts again
        let kept = try f.k(["run", "--name", "kept", ref, "/bin/true"])
        #expect(kept.status == 0)
        let first = f.mountDaemons()
        #expect(f.lazyMounts().count == 1 && first.count == 1, "mounts \(f.lazyMounts()), daemons \(first)")
        for pid in first { kill(pid, SIGKILL) }
        for _ in 0..<200 where !f.mountDaemons().isEmpty { usleep(10_000) }
        let again = try f.k(["run", "--rm", "--time", "--name", "again", ref])
        #expect(again.stdout.contains("hello from again"), "output: \(again.output)")
        #expect(again.stderr.contains("lazy mount") && !again.stderr.contains("reused"), "timing: \(again.stderr)")
        let second = f.mountDaemons()
        #expect(second.count == 1 && second != first, "daemons \(first) -> \(second)")
        #expect(f.lazyMounts().values.first == "fuse.kangaroo")
        try f.k(["rm", "kept"])
        f.expectNothingLeft("after rm of the exited container")
    }

    @Test("--lazy mounts a store image lazily too; a failing lazy mount leaves nothing behind")
    func lazyStore() throws {
        let f = try RunFixture()
        for name in ["one", "two"] {
            let r = try f.k(["run", "--rm", "--lazy", "--time", "--name", name, "sample"])
            #expect(r.stdout.contains("hello from \(name)"), "output: \(r.output)")
            #expect(r.stderr.contains("lazy mount"), "timing: \(r.stderr)")
            f.expectNothingLeft("after run --rm --lazy (\(name))")
        }
        // the mount command cannot create its run directory
        FileManager.default.createFile(atPath: f.tmp.sub("not-a-directory"), contents: nil)
        let env = f.env.merging(["KANGAROO_RUN_DIR": f.tmp.sub("not-a-directory")]) { $1 }
        let r = try run(TestEnv.kangaroo, ["run", "--rm", "--lazy", "sample"], env: env)
        #expect(r.status != 0 && r.stderr.contains("lazily"), "output: \(r.output)")
        f.expectNothingLeft("after a failed lazy mount")
    }
}
