import Foundation
import KangarooTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The lazy mount through the CLI binary, against the kernel's EROFS mount
/// of the same image (root, KANGAROO_INTEGRATION=1, test images from
/// scripts/testimages/build-all.sh).
@Suite("lazy mount (FUSE) vs kernel EROFS", .serialized,
       .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct LazyMountIntegrationTests {
    static let images: [(layout: String, tag: String)] = [
        ("sample", "latest"),
        ("synthetic", "synthetic"),
        ("debian-python", "python"),
        ("bigdata", "bigdata"),  // one 512 MiB random file and 4,096 small files on a busybox base
    ]

    /// Converts a test image into `tmp`'s store as img:TAG and mounts it with the kernel at tmp/kernel.
    static func prepare(_ tmp: MountTemp, _ image: (layout: String, tag: String)) throws {
        try tmp.kangaroo(["image", "convert", "--quiet", "oci:\(TestEnv.images)/\(image.layout):\(image.tag)", "img:\(image.tag)"])
        try tmp.kangaroo(["image", "materialize", "--mount", tmp.sub("kernel"), "img:\(image.tag)", tmp.sub("materialized")])
    }

    @discardableResult
    static func mount(_ tmp: MountTemp, _ ref: String, _ mp: String, _ extra: [String] = [], check: Bool = true) throws -> CommandResult {
        try FileManager.default.createDirectory(atPath: mp, withIntermediateDirectories: true)
        return try tmp.kangaroo(["image", "mount", "--daemon", "--cache", tmp.sub("cache")] + extra + [ref, mp], check: check)
    }

    @Test("FUSE mount equals the kernel EROFS mount", arguments: images)
    func fuseEqualsKernel(image: (layout: String, tag: String)) throws {
        let tmp = try MountTemp("equal")
        try Self.prepare(tmp, image)
        let r = try Self.mount(tmp, "img:\(image.tag)", tmp.sub("fuse"), ["--mode", "fuse", "--prefetch", "none"])
        #expect(r.stdout.contains("(fuse)"), "\(r.output)")
        #expect(mountType(tmp.sub("fuse")) == "fuse.kangaroo")
        try expectSameTree(tmp.sub("kernel"), tmp.sub("fuse"), "FUSE vs kernel EROFS of \(image)")
        let stats = try tmp.kangaroo(["image", "stats", "--json", tmp.sub("fuse")])
        #expect(stats.stdout.contains("\"cacheMisses\""))
        try tmp.kangaroo(["image", "umount", tmp.sub("fuse")])
        #expect(mountType(tmp.sub("fuse")) == nil)
        // Everything was read once: the cache is complete, so auto picks the kernel.
        let again = try Self.mount(tmp, "img:\(image.tag)", tmp.sub("fuse"), ["--mode", "auto"])
        #expect(again.stdout.contains("kernel erofs"), "\(again.output)")
        #expect(mountType(tmp.sub("fuse")) == "erofs")
        try expectSameTree(tmp.sub("kernel"), tmp.sub("fuse"), "kernel mount of the chunk cache vs materialized \(image)")
        try tmp.kangaroo(["image", "umount", tmp.sub("fuse")])
        #expect(mountType(tmp.sub("fuse")) == nil)
    }

    @Test("8 threads of random-offset reads get the kernel mount's bytes",
          arguments: [("debian-python", "python"), ("bigdata", "bigdata")] as [(String, String)])
    func concurrentRandomReads(image: (String, String)) throws {
        let tmp = try MountTemp("random")
        try Self.prepare(tmp, image)
        try Self.mount(tmp, "img:\(image.1)", tmp.sub("fuse"), ["--mode", "fuse", "--prefetch", "none"])
        // The largest regular files of the image.
        var files: [(String, Int)] = []
        let base = tmp.sub("kernel")
        let enumerator = FileManager.default.enumerator(atPath: base)
        while let rel = enumerator?.nextObject() as? String {
            var st = stat()
            if lstat(base + "/" + rel, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_size > 1 << 20 { files.append((rel, Int(st.st_size))) }
        }
        files.sort { $0.1 > $1.1 }
        let picked = Array(files.prefix(8))
        #expect(picked.count >= (image.0 == "bigdata" ? 1 : 4))
        let mismatches = Mismatches()
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            var generator = SystemRandomNumberGenerator()
            for i in 0..<40 {
                let (rel, size) = picked[(t + i) % picked.count]
                let count = Int.random(in: 1...300_000, using: &generator)
                let offset = Int.random(in: 0..<size, using: &generator)
                let a = readRange(tmp.sub("fuse") + "/" + rel, offset, count)
                let b = readRange(base + "/" + rel, offset, count)
                if a == nil || a != b { mismatches.add("\(rel) at \(offset)+\(count)") }
            }
        }
        #expect(mismatches.items.isEmpty, "\(mismatches.items.prefix(5))")
        try tmp.kangaroo(["image", "umount", tmp.sub("fuse")])
    }

    @Test("overlayfs on the FUSE mount runs python3 in a chroot")
    func overlayPython() throws {
        let tmp = try MountTemp("overlay")
        try tmp.kangaroo(["image", "convert", "--quiet", "oci:\(TestEnv.images)/debian-python:python", "img:python"])
        try Self.mount(tmp, "img:python", tmp.sub("fuse"), ["--mode", "fuse", "--prefetch", "list"])
        for d in ["upper", "work", "merged"] { try FileManager.default.createDirectory(atPath: tmp.sub(d), withIntermediateDirectories: true) }
        let options = "lowerdir=\(tmp.sub("fuse")),upperdir=\(tmp.sub("upper")),workdir=\(tmp.sub("work"))"
        #expect(Glibc.mount("overlay", tmp.sub("merged"), "overlay", 0, options) == 0, "overlay mount: errno \(errno)")
        let r = try run("chroot", [tmp.sub("merged"), "/usr/bin/python3", "-c",
                                   "import json, http.server; open('/tmp/ok', 'w').write(json.dumps({'ok': 1}))"])
        #expect(r.status == 0, "\(r.output)")
        #expect(FileManager.default.fileExists(atPath: tmp.sub("upper/tmp/ok")), "copy-up into the upper dir")
        #expect(umount(tmp.sub("merged")) == 0)
        try tmp.kangaroo(["image", "umount", tmp.sub("fuse")])
    }

    @Test("a tampered blob gives EIO, never wrong bytes, and the log names the chunk")
    func tamperedBlob() throws {
        let tmp = try MountTemp("tamper")
        try tmp.kangaroo(["image", "convert", "--quiet", "oci:\(TestEnv.images)/sample:latest", "img"])
        // Flip one byte in the middle of every blob of the image.
        let inspect = try tmp.kangaroo(["image", "inspect", "--json", "img"])
        let object = try JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [String: Any]
        let blobs = (object?["blobs"] as? [[String: Any]])?.compactMap { $0["digest"] as? String } ?? []
        #expect(!blobs.isEmpty)
        for digest in blobs {
            let path = tmp.sub("store/blobs/sha256/") + digest.replacingOccurrences(of: "sha256:", with: "")
            let fd = open(path, O_RDWR)
            #expect(fd >= 0)
            var st = stat()
            fstat(fd, &st)
            var byte: UInt8 = 0
            pread(fd, &byte, 1, off_t(st.st_size / 2))
            byte ^= 0xFF
            pwrite(fd, &byte, 1, off_t(st.st_size / 2))
            close(fd)
        }
        try Self.mount(tmp, "img", tmp.sub("fuse"), ["--mode", "fuse", "--prefetch", "none"])
        // Read every file: the ones whose chunk was hit fail with EIO.
        let r = try run("sh", ["-c", "cd \(tmp.sub("fuse")) && find . -type f -exec cat {} + > /dev/null"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("Input/output error"), "\(r.stderr.suffix(500))")
        usleep(1_500_000)  // the daemon writes its stats file every second
        let stats = try tmp.kangaroo(["image", "stats", "--json", tmp.sub("fuse")])
        #expect(stats.stdout.contains("\"verificationFailures\" : 1") || stats.stdout.range(of: "\"verificationFailures\" : [1-9]", options: .regularExpression) != nil, "\(stats.stdout)")
        // The daemon's log, read while it runs (a clean unmount removes it).
        let logs = (try? FileManager.default.contentsOfDirectory(atPath: tmp.runDir))?.filter { $0.hasSuffix(".log") } ?? []
        let log = logs.compactMap { try? String(contentsOfFile: tmp.runDir + "/" + $0, encoding: .utf8) }.joined()
        try tmp.kangaroo(["image", "umount", tmp.sub("fuse")])
        #expect(log.contains("failed verification and is not served"), "\(log.suffix(1000))")
        #expect(log.range(of: "chunk [0-9]+ \\(blob sha256:", options: .regularExpression) != nil)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: tmp.runDir)) ?? []).isEmpty, "the unmount left files in the run directory")
    }

    @Test("disk full: reads that cannot be cached get EIO, never wrong bytes; the cache stays consistent across a remount")
    func diskFull() throws {
        let tmp = try MountTemp("enospc")
        try Self.prepare(tmp, ("sample", "latest"))
        // A 3 MiB tmpfs holds about half of the image's 5.7 MiB of chunks.
        let cache = tmp.sub("smallcache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        #expect(Glibc.mount("tmpfs", cache, "tmpfs", 0, "size=3m") == 0)
        let files = nonEmptyRegularFiles(under: tmp.sub("kernel"))
        func readAll(_ mp: String) -> (good: Int, failed: Int) {
            var good = 0, failed = 0
            for rel in files {
                if let data = FileManager.default.contents(atPath: mp + "/" + rel) {
                    #expect(data == FileManager.default.contents(atPath: tmp.sub("kernel/") + rel), "wrong bytes in \(rel)")
                    good += 1
                } else {
                    failed += 1
                }
            }
            return (good, failed)
        }
        let mp = tmp.sub("fuse")
        try FileManager.default.createDirectory(atPath: mp, withIntermediateDirectories: true)
        try tmp.kangaroo(["image", "mount", "--daemon", "--mode", "fuse", "--prefetch", "none", "--cache", cache, "img:latest", mp])
        let first = readAll(mp)
        #expect(first.failed > 0 && first.good > 0, "\(first) \((try? run("sh", ["-c", "cat \(mp)/etc/passwd; df \(cache); ls -la \(cache); cat \(tmp.runDir)/*.log"]))?.output ?? "")")
        // EIO, as the kernel reports it to a reader.
        let cat = try run("sh", ["-c", "cd \(mp) && find . -type f -exec cat {} + > /dev/null"])
        #expect(cat.stderr.contains("Input/output error"), "\(cat.stderr.suffix(300))")
        usleep(1_200_000)
        let stats = try statsJSON(tmp, mp)
        #expect((stats["errors"] as? Int ?? 0) > 0, "\(stats)")
        try tmp.kangaroo(["image", "umount", mp])
        // Remount on the same full cache: what was cached is served, correctly.
        try tmp.kangaroo(["image", "mount", "--daemon", "--mode", "fuse", "--prefetch", "none", "--cache", cache, "img:latest", mp])
        let cachedAtStart = try statsJSON(tmp, mp)["chunksCached"] as? Int ?? 0
        #expect(cachedAtStart > 0)
        let second = readAll(mp)
        #expect(second.good >= first.good, "\(second) after \(first)")
        try tmp.kangaroo(["image", "umount", mp])
        umount2(cache, Int32(MNT_DETACH))
    }

    @Test("Prometheus metrics on --metrics: the same counters as image stats; 404 elsewhere; closed after umount")
    func prometheusEndpoint() throws {
        let tmp = try MountTemp("metrics")
        try Self.prepare(tmp, ("sample", "latest"))
        let r = try Self.mount(tmp, "img:latest", tmp.sub("fuse"), ["--mode", "fuse", "--prefetch", "none", "--metrics", "127.0.0.1:0"])
        let log = (try? FileManager.default.contentsOfDirectory(atPath: tmp.runDir))?.filter { $0.hasSuffix(".log") }
            .compactMap { try? String(contentsOfFile: tmp.runDir + "/" + $0, encoding: .utf8) }.joined() ?? ""
        let url = (r.stdout + log).split(separator: "\n").first { $0.hasPrefix("metrics at ") }.map { String($0.dropFirst(11)) }
        let endpoint = try #require(url, "\(r.output) \(log)")
        _ = FileManager.default.contents(atPath: tmp.sub("fuse/bin/busybox"))
        let body = try run("curl", ["-sf", endpoint])
        #expect(body.status == 0, "\(body.output)")
        func value(_ name: String) -> Double? {
            body.stdout.split(separator: "\n").first { $0.hasPrefix("kangaroo_lazy_\(name){") }
                .flatMap { $0.split(separator: " ").last }.flatMap { Double($0) }
        }
        #expect((value("fetched_bytes_total") ?? 0) > 0, "\(body.stdout)")
        #expect((value("chunks_cached") ?? 0) > 0)
        #expect(value("chunks") == Double(try statsJSON(tmp, tmp.sub("fuse"))["chunksTotal"] as? Int ?? -1))
        #expect(body.stdout.contains("# TYPE kangaroo_lazy_fetch_latency_milliseconds summary"))
        #expect(body.stdout.contains("mountpoint=\"\(tmp.sub("fuse"))\""))
        let other = try run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", endpoint.replacingOccurrences(of: "/metrics", with: "/other")])
        #expect(other.stdout == "404")
        try tmp.kangaroo(["image", "umount", tmp.sub("fuse")])
        usleep(300_000)
        #expect(try run("curl", ["-sf", "--max-time", "2", endpoint]).status != 0)
    }

    @Test("a listing never fetches; it pushes small cached files into the page cache, so reading them takes no request",
          arguments: ["64K", "0"])
    func listingPrefillsCachedSmallFiles(prefill: String) throws {
        let tmp = try MountTemp("prefill")
        try Self.prepare(tmp, ("sample", "latest"))
        try Self.mount(tmp, "img:latest", tmp.sub("fuse"), ["--mode", "fuse", "--prefetch", "none", "--prefill-small-files", prefill])
        let etc = try #require(try? FileManager.default.contentsOfDirectory(atPath: tmp.sub("fuse/etc")))
        #expect(etc.contains("passwd") && etc.contains("group"))
        usleep(1_200_000)  // the stats file is written every second
        #expect(try statsJSON(tmp, tmp.sub("fuse"))["bytesFetched"] as? Int == 0, "a listing fetched chunks")
        // Cache the chunks of two files, then forget every page and inode.
        let expected = try ["passwd", "group"].map { try #require(FileManager.default.contents(atPath: tmp.sub("kernel/etc/\($0)"))) }
        #expect(["passwd", "group"].map { FileManager.default.contents(atPath: tmp.sub("fuse/etc/\($0)")) } == expected)
        sync()
        try "3\n".write(toFile: "/proc/sys/vm/drop_caches", atomically: false, encoding: .utf8)
        _ = try? FileManager.default.contentsOfDirectory(atPath: tmp.sub("fuse/etc"))
        usleep(1_200_000)  // the pushes run in the background; then one stats period
        let before = try statsJSON(tmp, tmp.sub("fuse"))
        #expect(["passwd", "group"].map { FileManager.default.contents(atPath: tmp.sub("fuse/etc/\($0)")) } == expected)
        usleep(1_200_000)
        let after = try statsJSON(tmp, tmp.sub("fuse"))
        // Each READ asks the cache (a hit here); a pushed file takes none.
        let hits = (after["cacheHits"] as? Int ?? 0) - (before["cacheHits"] as? Int ?? 0)
        if prefill == "0" { #expect(hits >= 2, "\(before) \(after)") } else { #expect(hits == 0, "\(before) \(after)") }
        #expect(after["bytesFetched"] as? Int == before["bytesFetched"] as? Int)
        try tmp.kangaroo(["image", "umount", tmp.sub("fuse")])
    }

    @Test("kill -9 of the daemon mid-prefetch, umount of the dead mount, remount resumes from the cache")
    func killAndResume() throws {
        let tmp = try MountTemp("kill")
        try Self.prepare(tmp, ("debian-python", "python"))
        // The source capped at 8 MB/s: the prefetch of the whole image takes
        // seconds, so the kill lands in the middle of it on any machine.
        let r = try Self.mount(tmp, "img:python", tmp.sub("fuse"), ["--mode", "fuse", "--prefetch", "all", "--max-rate", "8M"])
        let pid = r.stdout.split(separator: "\n").first { $0.hasPrefix("daemon pid") }?.split(separator: " ")[2]
        let daemon = pid.flatMap { Int32($0.filter(\.isNumber)) } ?? 0
        #expect(daemon > 0, "\(r.output)")
        // Wait until some chunks are cached (the stats file is written every second).
        for _ in 0..<50 {
            usleep(200_000)
            if let s = try? statsJSON(tmp, tmp.sub("fuse")), (s["chunksCached"] as? Int ?? 0) > 0 { break }
        }
        kill(daemon, SIGKILL)
        for _ in 0..<100 where kill(daemon, 0) == 0 { usleep(20_000) }
        #expect(try run("stat", [tmp.sub("fuse")]).stderr.contains("Transport endpoint is not connected"))
        let u = try tmp.kangaroo(["image", "umount", tmp.sub("fuse")])
        #expect(u.stdout.contains("dead mount"), "\(u.output)")
        #expect(mountType(tmp.sub("fuse")) == nil)
        // Remount: the verified chunks are reused, the tree equals the kernel's.
        try Self.mount(tmp, "img:python", tmp.sub("fuse"), ["--mode", "fuse", "--prefetch", "none"])
        let before = try statsJSON(tmp, tmp.sub("fuse"))
        let cachedAtStart = before["chunksCached"] as? Int ?? 0
        let total = before["chunksTotal"] as? Int ?? 0
        #expect(cachedAtStart > 0 && cachedAtStart < total, "cached \(cachedAtStart) of \(total)")
        try expectSameTree(tmp.sub("kernel"), tmp.sub("fuse"), "remount after kill -9")
        usleep(1_200_000)
        let after = try statsJSON(tmp, tmp.sub("fuse"))
        let fetched = after["chunksFetched"] as? Int ?? -1
        #expect(fetched >= 0 && fetched <= total - cachedAtStart, "fetched \(fetched), \(cachedAtStart) were cached, \(total) total")
        try tmp.kangaroo(["image", "umount", tmp.sub("fuse")])
    }

    @Test("registry source: range requests; a stopped registry gives EIO within the deadline; cached data keeps being served")
    func registrySourceAndDeadline() throws {
        let tmp = try MountTemp("registry")
        let registry = try TestRegistry()
        try Self.prepare(tmp, ("sample", "latest"))
        let ref = "\(registry.host)/lazy/sample:v1"
        try tmp.kangaroo(["image", "push", "--quiet", "img:latest", ref])
        // A fresh store: only manifest, config and bootstrap are pulled.
        let lazyStore = tmp.sub("lazystore")
        let mp = tmp.sub("fuse")
        try FileManager.default.createDirectory(atPath: mp, withIntermediateDirectories: true)
        try run(TestEnv.kangaroo, ["image", "mount", "--daemon", "--mode", "fuse", "--prefetch", "none", "--deadline", "3",
                                          "--retries", "1", "--cache", tmp.sub("regcache"), "--store", lazyStore, ref, mp],
                env: ["KANGAROO_RUN_DIR": tmp.runDir], check: true)
        let blobs = try FileManager.default.contentsOfDirectory(atPath: lazyStore + "/blobs/sha256")
        #expect(blobs.count == 3, "manifest, config, bootstrap only: \(blobs)")
        // Read half the files through the registry.
        let files = nonEmptyRegularFiles(under: tmp.sub("kernel"))
        let warm = files.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
        let cold = files.enumerated().filter { $0.offset % 2 == 1 }.map(\.element)
        for rel in warm {
            #expect(FileManager.default.contents(atPath: mp + "/" + rel) == FileManager.default.contents(atPath: tmp.sub("kernel/") + rel), "\(rel)")
        }
        // Registry frozen: an uncached read fails with EIO within the deadline.
        kill(registry.process.processIdentifier, SIGSTOP)
        defer { kill(registry.process.processIdentifier, SIGCONT) }
        let start = Date()
        var failed = 0
        for rel in cold.prefix(3) {
            let r = try run("cat", [mp + "/" + rel])
            if r.status != 0 {
                failed += 1
                #expect(r.stderr.contains("Input/output error"), "\(r.stderr)")
            }
        }
        let elapsed = Date().timeIntervalSince(start)
        #expect(failed >= 1, "no uncached read failed while the registry was stopped")
        #expect(elapsed < Double(failed) * 8 + 5, "EIO took \(elapsed) s for \(failed) reads (deadline 3 s)")
        for rel in warm.prefix(5) {
            #expect(FileManager.default.contents(atPath: mp + "/" + rel) == FileManager.default.contents(atPath: tmp.sub("kernel/") + rel), "cached \(rel)")
        }
        kill(registry.process.processIdentifier, SIGCONT)
        // Registry back: everything reads correctly.
        try expectSameTree(tmp.sub("kernel"), mp, "registry-backed FUSE mount")
        try tmp.kangaroo(["image", "umount", mp])
    }
}

/// Relative paths of the non-empty regular files below `root`, sorted.
func nonEmptyRegularFiles(under root: String) -> [String] {
    var files: [String] = []
    let enumerator = FileManager.default.enumerator(atPath: root)
    while let rel = enumerator?.nextObject() as? String {
        var st = stat()
        if lstat(root + "/" + rel, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_size > 0 { files.append(rel) }
    }
    return files.sorted()
}

func statsJSON(_ tmp: MountTemp, _ mp: String) throws -> [String: Any] {
    let r = try tmp.kangaroo(["image", "stats", "--json", mp])
    return (try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
}

func readRange(_ path: String, _ offset: Int, _ count: Int) -> [UInt8]? {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out = [UInt8](repeating: 0, count: count)
    var done = 0
    while done < count {
        let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
        if n < 0 { return nil }
        if n == 0 { break }
        done += n
    }
    return Array(out.prefix(done))
}

final class Mismatches: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var list: [String] = []
    func add(_ s: String) { lock.lock(); list.append(s); lock.unlock() }
    var items: [String] { lock.lock(); defer { lock.unlock() }; return list }
}
