#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import Synchronization
import SystemPackage
import Testing
@testable import KangarooFUSE

let integration = ProcessInfo.processInfo.environment["KANGAROO_INTEGRATION"] == "1"

/// Test plumbing: temp dirs, a mounted server, syscall helpers.
enum Fixture {
    static let bigSize = 64 << 20
    static let fileSystem = MemoryTreeBuilder.standard(bigFileSize: bigSize)
    static let bigContent = Pattern.bytes(count: bigSize)

    static func temporaryDirectory() throws -> String {
        var template = Array("/tmp/kangaroo-test-fuse-XXXXXX".utf8CString)
        let result = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        try #require(result != nil)
        return String(cString: result!)
    }

    /// Mounts `fileSystem` at a fresh directory, runs `body`, then stops the
    /// server and removes the directory (also when `body` throws).
    static func withServer<T>(
        _ fileSystem: some FUSEFileSystem = Fixture.fileSystem, threads: Int = 8, readaheadKiB: Int? = 1024,
        ioUring: Bool = true, _ body: (String, FUSEServer) throws -> T
    ) throws -> T {
        let directory = try temporaryDirectory()
        let mountPoint = directory + "/mnt"
        mkdir(mountPoint, 0o755)
        var configuration = FUSEServer.Configuration(mountPoint: FilePath(mountPoint))
        configuration.threads = threads
        configuration.readaheadKiB = readaheadKiB
        configuration.ioUring = ioUring
        let server = FUSEServer(fileSystem: fileSystem, configuration: configuration, logger: Logger(label: "fuse-test"))
        defer {
            try? server.stop()
            if FUSEMount.isMounted(FilePath(mountPoint)) { try? FUSEMount.unmount(FilePath(mountPoint), lazy: true) }
            rmdir(mountPoint)
            try? FileManager.default.removeItem(atPath: directory)
        }
        try server.start()
        return try body(mountPoint, server)
    }

    static func lstatOrFail(_ path: String) throws -> stat {
        var info = stat()
        let result = lstat(path, &info)
        try #require(result == 0, "lstat \(path): \(String(cString: strerror(errno)))")
        return info
    }

    static func readAll(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 { return nil }
            if count == 0 { return result }
            result += chunk[0..<count]
        }
    }

    /// memcmp-based equality (Array == is slow for 64 MiB in debug builds).
    static func same(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.count == b.count && (a.isEmpty || a.withUnsafeBytes { x in b.withUnsafeBytes { y in memcmp(x.baseAddress!, y.baseAddress!, a.count) == 0 } })
    }

    static func listDirectory(_ path: String) -> [String]? {
        guard let dir = opendir(path) else { return nil }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            names.append(name)
        }
        return names
    }

    /// Runs a command; returns (status, stdout).
    static func run(_ arguments: [String]) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func mountInfo(_ path: String) -> FUSEMount.MountInfo? { FUSEMount.mountInfo(for: FilePath(path)) }

    /// Whether the fuse module offers FUSE over io_uring (scripts/test.sh turns it on).
    static var kernelOffersIOUring: Bool {
        FUSEMount.readSmallFile("/sys/module/fuse/parameters/enable_uring")?.hasPrefix("Y") == true
    }
}

@Suite(.enabled(if: integration, "needs root and /dev/fuse; set KANGAROO_INTEGRATION=1"), .serialized)
struct FUSEIntegrationTests {
    let fs = Fixture.fileSystem

    @Test func mountIsReadOnlyFuseKangaroo() throws {
        try Fixture.withServer { mountPoint, server in
            let info = try #require(Fixture.mountInfo(mountPoint))
            #expect(info.fileSystemType == "fuse.kangaroo")
            #expect(info.source == "kangaroo")
            #expect(info.options.split(separator: ",").contains("ro"))
            #expect(server.negotiatedMinor == 45)
            #expect(server.negotiatedFlags.contains([.asyncRead, .doReaddirplus, .parallelDirops, .maxPages]))
            var stats = statvfs()
            try #require(statvfs(mountPoint, &stats) == 0)
            #expect(stats.f_blocks == 1000)
            #expect(stats.f_bsize == 4096)
            #expect(stats.f_namemax == 255)
            #expect(stats.f_flag & UInt(ST_RDONLY) != 0)
            // The server raised the bdi readahead past the kernel's INIT offer.
            let readahead = FUSEMount.readSmallFile("/sys/class/bdi/\(info.major):\(info.minor)/read_ahead_kb")
            #expect(readahead == "1024\n")
        }
    }

    /// Every path of the model: lstat, content, link targets, listings.
    @Test(arguments: [true, false])
    func kernelSeesExactlyTheModel(ioUring: Bool) throws {
        try Fixture.withServer(ioUring: ioUring) { mountPoint, _ in
            var checked = 0
            for (path, id) in fs.paths.sorted(by: { $0.key < $1.key }) {
                let node = try #require(fs.nodes[id])
                let full = path.isEmpty ? mountPoint : mountPoint + "/" + path
                let info = try Fixture.lstatOrFail(full)
                let attributes = node.attributes
                #expect(info.st_ino == attributes.inode, "\(path)")
                #expect(UInt32(info.st_mode) == attributes.mode, "\(path)")
                #expect(UInt32(info.st_nlink) == attributes.linkCount, "\(path)")
                #expect(info.st_uid == attributes.uid && info.st_gid == attributes.gid, "\(path)")
                #expect(UInt64(info.st_size) == attributes.size, "\(path)")
                #expect(UInt64(info.st_blocks) == attributes.blocks, "\(path)")
                #expect(info.st_mtim.tv_sec == Int(attributes.modificationTime.seconds), "\(path)")
                #expect(info.st_mtim.tv_nsec == Int(attributes.modificationTime.nanoseconds), "\(path)")
                switch node.kind {
                case .file(let content) where content.count < (1 << 20):
                    #expect(Fixture.readAll(full) == content, "\(path)")
                case .symlink(let target):
                    var buffer = [CChar](repeating: 0, count: 4096)
                    let count = readlink(full, &buffer, buffer.count)
                    #expect(count == target.count)
                    #expect(buffer[0..<max(0, count)].map { UInt8(bitPattern: $0) } == target, "\(path)")
                case .directory(let names, _, _):
                    let listed = try #require(Fixture.listDirectory(full))
                    let expected = [".", ".."] + names.map { String(decoding: $0, as: UTF8.self) }
                    #expect(listed.sorted() == expected.sorted(), "\(path)")
                default:
                    break
                }
                checked += 1
            }
            #expect(checked > 4000)
            // Misses are ENOENT (and cached negative entries stay ENOENT).
            for _ in 0..<2 {
                var info = stat()
                #expect(lstat(mountPoint + "/d000/missing", &info) == -1 && errno == ENOENT)
            }
            var info = stat()
            #expect(stat(mountPoint + "/links/dangling", &info) == -1 && errno == ENOENT)
            #expect(stat(mountPoint + "/empty/child", &info) == -1 && errno == ENOTDIR)
        }
    }

    @Test func hardlinksShareTheInode() throws {
        try Fixture.withServer { mountPoint, _ in
            let a = try Fixture.lstatOrFail(mountPoint + "/d000/f000")
            let b = try Fixture.lstatOrFail(mountPoint + "/links/hard")
            #expect(a.st_ino == b.st_ino)
            #expect(a.st_nlink == 2 && b.st_nlink == 2)
            #expect(Fixture.readAll(mountPoint + "/links/hard") == Fixture.readAll(mountPoint + "/d000/f000"))
            let c = try Fixture.lstatOrFail(mountPoint + "/d001/hard-to-d000-f001")
            #expect(c.st_ino == (try Fixture.lstatOrFail(mountPoint + "/d000/f001")).st_ino)
        }
    }

    @Test func xattrsThroughSyscallsAndGetfattr() throws {
        try Fixture.withServer { mountPoint, _ in
            let path = mountPoint + "/d000/f001"
            var buffer = [UInt8](repeating: 0, count: 256)
            let size = sysGetxattr(path, "user.kangaroo", &buffer, buffer.count)
            #expect(size == 5)
            #expect(Array(buffer[0..<max(0, size)]) == Array("hello".utf8))
            #expect(sysGetxattr(path, "user.kangaroo", nil, 0) == 5)
            #expect(sysGetxattr(path, "user.kangaroo", &buffer, 2) == -1 && errno == ERANGE)
            #expect(sysGetxattr(path, "user.missing", &buffer, buffer.count) == -1 && errno == ENODATA)
            #expect(sysGetxattr(path, "user.binary", &buffer, buffer.count) == 4 && Array(buffer[0..<4]) == [0, 1, 2, 255])
            var list = [CChar](repeating: 0, count: 256)
            let listed = sysListxattr(path, &list, list.count)
            let names = list[0..<max(0, listed)].split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
            #expect(names.sorted() == ["user.binary", "user.empty", "user.kangaroo"])
            #expect(sysListxattr(mountPoint + "/d000/f002", &list, list.count) == 0)
            let (status, output) = try Fixture.run(["getfattr", "-d", "-m", "-", path])
            #expect(status == 0)
            #expect(output.contains("user.kangaroo=\"hello\""))
            let (dirStatus, dirOutput) = try Fixture.run(["getfattr", "-n", "user.dir", "--only-values", mountPoint + "/d000"])
            #expect(dirStatus == 0 && dirOutput == "directory attr")
        }
    }

    @Test func coreutilsSeeTheTree() throws {
        try Fixture.withServer { mountPoint, _ in
            let (lsStatus, ls) = try Fixture.run(["ls", "-la", mountPoint + "/d001"])
            #expect(lsStatus == 0)
            let lines = ls.split(separator: "\n")
            #expect(lines.count == 1 + 2 + 101)  // "total", ".", "..", entries
            #expect(lines.contains { $0.hasSuffix(" f010") && $0.hasPrefix("-rwxr-xr-x") })
            let (_, statLine) = try Fixture.run(["stat", "-c", "%i %h %s %a %F", mountPoint + "/links/hard"])
            let f000 = try #require(fs.paths["d000/f000"])
            let attributes = try #require(fs.nodes[f000]?.attributes)
            #expect(statLine == "\(f000) 2 \(attributes.size) \(String(attributes.mode & 0o7777, radix: 8)) regular file\n")
            let (_, target) = try Fixture.run(["readlink", mountPoint + "/links/s001"])
            #expect(target == "../d001/f001\n")
            let (_, resolved) = try Fixture.run(["cat", mountPoint + "/links/s041"])
            #expect(resolved.hasPrefix("file d001/f041\n"))
            let (findStatus, found) = try Fixture.run(["find", mountPoint, "-type", "f"])
            #expect(findStatus == 0)
            // Hardlinks show under each name: 4000 + empty + big + slow + long + 2 hardlinks.
            #expect(found.split(separator: "\n").count == 4000 + 4 + 2)
        }
    }

    @Test(arguments: [true, false])
    func concurrentRandomReadsOfTheBigFile(ioUring: Bool) throws {
        try Fixture.withServer(threads: 8, ioUring: ioUring) { mountPoint, server in
            let path = mountPoint + "/big"
            let expected = Fixture.bigContent
            let failures = Atomic<Int>(0)
            let reads = Atomic<Int>(0)
            let group = DispatchGroup()
            for thread in 0..<8 {
                group.enter()
                Thread {
                    defer { group.leave() }
                    // Odd threads bypass the page cache (O_DIRECT), so every
                    // read of theirs is a FUSE READ served by the workers.
                    let direct: Int32 = thread % 2 == 1 ? 0o40000 : 0
                    let fd = open(path, O_RDONLY | O_CLOEXEC | direct)
                    guard fd >= 0 else {
                        failures.add(1, ordering: .relaxed)
                        return
                    }
                    defer { close(fd) }
                    var generator = SplitMix(seed: UInt64(thread) + 1)
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
                    defer { buffer.deallocate() }
                    for _ in 0..<150 {
                        let offset = Int(generator.next() % UInt64(expected.count))
                        let size = Int(generator.next() % UInt64(1 << 20)) + 1
                        let count = pread(fd, buffer.baseAddress, size, off_t(offset))
                        let want = min(size, expected.count - offset)
                        let same = expected.withUnsafeBytes { memcmp(buffer.baseAddress!, $0.baseAddress! + offset, want) == 0 }
                        if count != want || !same { failures.add(1, ordering: .relaxed) }
                        reads.add(1, ordering: .relaxed)
                    }
                }.start()
            }
            #expect(group.wait(timeout: .now() + 120) == .success)
            let failed = failures.load(ordering: .relaxed)
            let readCount = reads.load(ordering: .relaxed)
            #expect(failed == 0)
            #expect(readCount == 8 * 150)
            let statistics = server.statistics
            #expect(statistics.reads > 0 && statistics.bytesRead > 0)
            #expect(statistics.peakInFlight <= server.workerCount)
            let whole = try #require(Fixture.readAll(path))
            #expect(Fixture.same(whole, expected))
        }
    }

    /// A read blocked inside the filesystem holds one worker; other
    /// requests keep being served.
    @Test(arguments: [true, false])
    func slowReadDoesNotBlockOtherRequests(ioUring: Bool) throws {
        let fs = MemoryTreeBuilder.standard(bigFileSize: 1 << 20)
        try Fixture.withServer(fs, threads: 4, ioUring: ioUring) { mountPoint, server in
            let result = Mutex<[UInt8]?>(nil)
            let done = Atomic<Bool>(false)
            let thread = Thread {
                result.withLock { $0 = Fixture.readAll(mountPoint + "/slow") }
                done.store(true, ordering: .releasing)
            }
            thread.start()
            let deadline = ContinuousClock.now + .seconds(10)
            while fs.gate.waiting.load(ordering: .relaxed) == 0 && ContinuousClock.now < deadline { usleep(1000) }
            let waiting = fs.gate.waiting.load(ordering: .relaxed)
            #expect(waiting == 1)
            let start = ContinuousClock.now
            for index in 0..<50 {
                let path = "d\(MemoryTreeBuilder.pad(index % 40, 3))/f\(MemoryTreeBuilder.pad(index, 3))"
                let expected: [UInt8]
                if case .file(let content)? = fs.paths[path].flatMap({ fs.nodes[$0]?.kind }) { expected = content } else { expected = [] }
                #expect(Fixture.readAll(mountPoint + "/" + path) == expected)
            }
            #expect(ContinuousClock.now - start < .seconds(5))
            // The blocked READ and the others were in flight together.
            #expect(server.statistics.inFlight >= 1)
            #expect(server.statistics.peakInFlight >= 2)
            let finishedEarly = done.load(ordering: .acquiring)
            #expect(!finishedEarly)
            fs.gate.release()
            while !done.load(ordering: .acquiring) && ContinuousClock.now < deadline + .seconds(10) { usleep(1000) }
            #expect(result.withLock { $0 } == Array("slow content\n".utf8))
        }
    }

    @Test func writesFailWithEROFS() throws {
        try Fixture.withServer { mountPoint, _ in
            #expect(open(mountPoint + "/d000/f000", O_WRONLY) == -1 && errno == EROFS)
            #expect(open(mountPoint + "/new", O_WRONLY | O_CREAT, 0o644) == -1 && errno == EROFS)
            #expect(mkdir(mountPoint + "/newdir", 0o755) == -1 && errno == EROFS)
            #expect(unlink(mountPoint + "/empty") == -1 && errno == EROFS)
            #expect(sysSetxattr(mountPoint + "/empty", "user.x", "y", 1, 0) == -1 && errno == EROFS)
            #expect(symlink("x", mountPoint + "/sym") == -1 && errno == EROFS)
        }
    }

    @Test func overlayfsOnTopReadsThroughAndCopiesUp() throws {
        try Fixture.withServer { mountPoint, _ in
            let scratch = try Fixture.temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            for name in ["upper", "work", "merged"] { mkdir(scratch + "/" + name, 0o755) }
            let merged = scratch + "/merged"
            let options = "lowerdir=\(mountPoint),upperdir=\(scratch)/upper,workdir=\(scratch)/work"
            try #require(mount("overlay", merged, "overlay", 0, options) == 0, "overlay mount: \(String(cString: strerror(errno)))")
            defer { umount2(merged, Int32(MNT_DETACH)) }
            let f005 = try #require(fs.paths["d002/f005"])
            guard case .file(let content)? = fs.nodes[f005]?.kind else { throw FUSEError.invalid }
            #expect(Fixture.readAll(merged + "/d002/f005") == content)
            #expect(Fixture.readAll(merged + "/big")?.count == Fixture.bigSize)
            #expect(Fixture.listDirectory(merged + "/d003")?.count == 102)
            // Copy-up on write: the upper layer gets the change, FUSE keeps the original.
            let fd = open(merged + "/d002/f005", O_WRONLY | O_APPEND)
            try #require(fd >= 0)
            #expect(write(fd, "more", 4) == 4)
            close(fd)
            #expect(Fixture.readAll(merged + "/d002/f005") == content + Array("more".utf8))
            #expect(Fixture.readAll(mountPoint + "/d002/f005") == content)
            #expect(Fixture.readAll(scratch + "/upper/d002/f005") == content + Array("more".utf8))
            var buffer = [UInt8](repeating: 0, count: 64)
            #expect(sysGetxattr(merged + "/d000/f001", "user.kangaroo", &buffer, buffer.count) == 5)
            #expect(umount2(merged, 0) == 0)
        }
    }

    @Test func stopUnmountsAndLeavesNothing() throws {
        var mountPointSeen = ""
        try Fixture.withServer { mountPoint, server in
            mountPointSeen = mountPoint
            #expect(FUSEMount.isMounted(FilePath(mountPoint)))
            try server.stop()
            #expect(!FUSEMount.isMounted(FilePath(mountPoint)))
            try server.stop()  // idempotent
        }
        #expect(!FUSEMount.isMounted(FilePath(mountPointSeen)))
        #expect(!FileManager.default.fileExists(atPath: mountPointSeen))
    }

    /// stop() while a file is open: the mount is detached lazily, the open
    /// file keeps working, and stop returns once it is closed.
    @Test func stopWhileBusyDetachesAndWaitsForUsers() throws {
        try Fixture.withServer { mountPoint, server in
            let fd = open(mountPoint + "/big", O_RDONLY)
            try #require(fd >= 0)
            let stopped = Atomic<Bool>(false)
            let thread = Thread {
                try? server.stop()
                stopped.store(true, ordering: .releasing)
            }
            thread.start()
            let deadline = ContinuousClock.now + .seconds(10)
            while FUSEMount.isMounted(FilePath(mountPoint)) && ContinuousClock.now < deadline { usleep(1000) }
            #expect(!FUSEMount.isMounted(FilePath(mountPoint)))
            var buffer = [UInt8](repeating: 0, count: 4096)
            #expect(pread(fd, &buffer, 4096, 8192) == 4096)
            #expect(buffer[...] == Fixture.bigContent[8192..<12288])
            let stoppedEarly = stopped.load(ordering: .acquiring)
            #expect(!stoppedEarly)
            close(fd)
            while !stopped.load(ordering: .acquiring) && ContinuousClock.now < deadline { usleep(1000) }
            let stoppedLate = stopped.load(ordering: .acquiring)
            #expect(stoppedLate)
        }
    }

    /// An aborted connection (fusectl `abort`, what the kernel does when
    /// the daemon dies) ends the workers; `wait()` returns and `stop()`
    /// removes the ENOTCONN mount left behind.
    @Test(arguments: [true, false])
    func abortedConnectionEndsWorkersAndStopCleansUp(ioUring: Bool) throws {
        try Fixture.withServer(threads: 4, ioUring: ioUring) { mountPoint, server in
            let controlWasMounted = FUSEMount.isMounted(FilePath(FUSEMount.controlDirectory))
            try FUSEMount.abortConnection(FilePath(mountPoint))
            #expect(FUSEMount.isMounted(FilePath(FUSEMount.controlDirectory)) == controlWasMounted)
            server.wait()  // returns: every worker saw the abort
            #expect(FUSEMount.isDeadMount(FilePath(mountPoint)))
            try server.stop()
            #expect(!FUSEMount.isMounted(FilePath(mountPoint)))
        }
    }

    /// abort() ends a server whose filesystem call hangs, with a file open.
    @Test(arguments: [true, false])
    func abortStopsAServerStuckInARead(ioUring: Bool) throws {
        let fs = MemoryTreeBuilder.standard(bigFileSize: 4096)
        try Fixture.withServer(fs, threads: 2, ioUring: ioUring) { mountPoint, server in
            let failedWith = Atomic<Int32>(0)
            let group = DispatchGroup()
            group.enter()
            Thread {
                let fd = open(mountPoint + "/slow", O_RDONLY)
                var buffer = [UInt8](repeating: 0, count: 64)
                let count = fd >= 0 ? read(fd, &buffer, 64) : -1
                failedWith.store(count < 0 ? errno : 0, ordering: .relaxed)
                if fd >= 0 { close(fd) }
                group.leave()
            }.start()
            let deadline = ContinuousClock.now + .seconds(10)
            while fs.gate.waiting.load(ordering: .relaxed) == 0 && ContinuousClock.now < deadline { usleep(1000) }
            let aborted = DispatchGroup()
            aborted.enter()
            let abortError = Mutex<FUSEError?>(nil)
            Thread {
                do throws(FUSEError) { try server.abort() } catch { abortError.withLock { $0 = error } }
                aborted.leave()
            }.start()
            // The caller fails at once although the filesystem call still hangs.
            #expect(group.wait(timeout: .now() + 10) == .success)
            let error = failedWith.load(ordering: .relaxed)
            #expect(error == ENOTCONN || error == ECONNABORTED)
            fs.gate.release()  // the stuck worker finishes; its reply goes nowhere
            #expect(aborted.wait(timeout: .now() + 10) == .success)
            #expect(abortError.withLock { $0 } == nil)
            #expect(!FUSEMount.isMounted(FilePath(mountPoint)))
        }
    }

    /// A server that dies (its /dev/fuse descriptors closed, as when the
    /// process is killed) leaves an ENOTCONN mount; lazy unmount cleans it.
    @Test(arguments: [false, true])
    func deadServerLeavesENOTCONNMountThatLazyUnmountCleans(answerInit: Bool) throws {
        let directory = try Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let mountPoint = FilePath(directory)
        let fd = try FUSEServer.openDevice()
        do {
            try FUSEMount.mount(device: FileDescriptor(rawValue: fd), at: mountPoint, options: FUSEMount.Options())
        } catch {
            close(fd)
            throw error
        }
        if answerInit { try Fixture.answerInit(fd: fd) }
        close(fd)  // the "crash"
        #expect(FUSEMount.isMounted(mountPoint))
        #expect(FUSEMount.isDeadMount(mountPoint))
        try FUSEMount.unmount(mountPoint, lazy: true)
        #expect(!FUSEMount.isMounted(mountPoint))
        #expect(!FUSEMount.isDeadMount(mountPoint))
    }
}

extension FUSEIntegrationTests {
    /// With the fuse module's enable_uring on, requests travel through the
    /// per-CPU io_uring queues (INIT agrees on FUSE_OVER_IO_URING and every
    /// worker registered); turned off in the configuration, through
    /// /dev/fuse. Either way the same bytes come back.
    @Test func ioUringTransportFollowsKernelAndConfiguration() throws {
        for ioUring in [true, false] {
            try Fixture.withServer(threads: 4, ioUring: ioUring) { mountPoint, server in
                let expected = ioUring && Fixture.kernelOffersIOUring
                #expect(server.usesIOUring == expected)
                #expect(server.negotiatedFlags.contains(.overIOUring) == expected)
                let before = server.statistics.reads
                let content = try #require(Fixture.readAll(mountPoint + "/big"))
                #expect(Fixture.same(content, Pattern.bytes(count: content.count)))
                #expect(content.count == Fixture.bigSize)
                #expect(server.statistics.reads > before)
            }
        }
    }

    /// Ring workers wait for requests all the time; that wait must not
    /// count as iowait, or every idle mount would show as I/O pressure and
    /// blocked tasks on the node (IORING_ENTER_NO_IOWAIT).
    @Test(.enabled(if: Fixture.kernelOffersIOUring, "the fuse module's enable_uring is off"))
    func idleRingWorkersAreNotInIOWait() throws {
        try Fixture.withServer(threads: 32) { _, server in
            #expect(server.usesIOUring)
            usleep(200_000)
            // procs_blocked counts every task in iowait on the machine: the
            // fewest of a few samples, so that other I/O does not count.
            var fewest = Int.max
            for _ in 0..<5 {
                let stat = FUSEMount.readSmallFile("/proc/stat") ?? ""
                let line = stat.split(separator: "\n").first { $0.hasPrefix("procs_blocked ") }
                fewest = min(fewest, line.flatMap { Int($0.split(separator: " ")[1]) } ?? Int.max)
                usleep(50_000)
            }
            #expect(fewest < 16, "\(fewest) tasks in iowait with \(server.workerCount) idle workers")
        }
    }

    /// A listing whose filesystem pushes the directory's files into the
    /// page cache (FUSE_NOTIFY_STORE): reading them afterwards takes no
    /// READ, and the bytes are right. Without the push, they take READs.
    @Test(arguments: [true, false])
    func pushedFilesAreReadWithoutRequests(push: Bool) throws {
        let fs = MemoryTreeBuilder.standard(bigFileSize: 4096, pushOnListing: push)
        try Fixture.withServer(fs, threads: 4) { mountPoint, server in
            let names = try #require(Fixture.listDirectory(mountPoint + "/d007"))
            #expect(names.count == 102)
            #expect(fs.pushed.load(ordering: .relaxed) == (push ? 100 : 0))
            let before = server.statistics.reads
            for name in names where name.hasPrefix("f") {
                let id = try #require(fs.paths["d007/" + name])
                guard case .file(let expected)? = fs.nodes[id]?.kind else { Issue.record("d007/\(name)"); continue }
                #expect(Fixture.readAll(mountPoint + "/d007/" + name) == expected, "d007/\(name)")
            }
            let reads = server.statistics.reads - before
            if push { #expect(reads == 0) } else { #expect(reads >= 100) }
            // The kernel refuses a push for an inode it does not hold.
            let refused = [UInt8]("x".utf8).withUnsafeBytes { bytes in
                server.pageCache?.store(nodeID: 999_999, offset: 0, bytes: bytes)
            }
            #expect(refused == false)
        }
    }

    /// A real process holding the connection's only descriptor is killed
    /// with SIGKILL: the kernel aborts the connection and the mount answers
    /// ENOTCONN until a lazy unmount removes it.
    @Test func killedServerProcessLeavesENOTCONNMount() throws {
        let directory = try Fixture.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let mountPoint = FilePath(directory)
        let fd = try FUSEServer.openDevice()
        let process = Process()
        do {
            defer { close(fd) }
            try FUSEMount.mount(device: FileDescriptor(rawValue: fd), at: mountPoint, options: FUSEMount.Options())
            try Fixture.answerInit(fd: fd)
            // The child gets the /dev/fuse descriptor as its stdin.
            process.executableURL = URL(fileURLWithPath: "/bin/sleep")
            process.arguments = ["60"]
            process.standardInput = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
            try process.run()
        }
        // Ours is closed: the child now holds the connection alive.
        #expect(FUSEMount.isMounted(mountPoint))
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal)
        #expect(FUSEMount.isDeadMount(mountPoint))
        var info = stat()
        #expect(stat(directory + "/anything", &info) == -1 && errno == ENOTCONN)
        try FUSEMount.unmount(mountPoint, lazy: true)
        #expect(!FUSEMount.isMounted(mountPoint))
    }
}

extension Fixture {
    /// Reads the INIT request from `fd` and answers it, as a server would.
    static func answerInit(fd: Int32) throws {
        let session = FUSESession(fileSystem: Fixture.fileSystem, options: FUSEInitOptions(), logger: Logger(label: "t"))
        let request = UnsafeMutableRawBufferPointer.allocate(byteCount: FUSEProtocol.requestBufferSize, alignment: 8)
        let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 8)
        defer {
            request.deallocate()
            reply.deallocate()
        }
        let count = read(fd, request.baseAddress, request.count)
        try #require(count > 0)
        let length = try #require(session.handle(request: UnsafeRawBufferPointer(rebasing: request[0..<count]), reply: reply))
        #expect(write(fd, reply.baseAddress, length) == length)
        #expect(session.negotiatedState != nil)
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return Pattern.word(state)
    }
}

// <sys/xattr.h> is not part of Swift's Glibc module; bind the libc symbols.
private typealias GetxattrFunction = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeMutableRawPointer?, Int) -> Int
private typealias ListxattrFunction = @convention(c) (UnsafePointer<CChar>, UnsafeMutablePointer<CChar>?, Int) -> Int
private typealias SetxattrFunction = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32

private func libc<T>(_ name: String, as type: T.Type) -> T {
    guard let symbol = dlsym(nil, name) else { fatalError("no \(name) in libc") }
    return unsafeBitCast(symbol, to: type)
}

func sysGetxattr(_ path: String, _ name: String, _ value: UnsafeMutableRawPointer?, _ size: Int) -> Int {
    libc("getxattr", as: GetxattrFunction.self)(path, name, value, size)
}

func sysListxattr(_ path: String, _ list: UnsafeMutablePointer<CChar>?, _ size: Int) -> Int {
    libc("listxattr", as: ListxattrFunction.self)(path, list, size)
}

func sysSetxattr(_ path: String, _ name: String, _ value: String, _ size: Int, _ flags: Int32) -> Int32 {
    libc("setxattr", as: SetxattrFunction.self)(path, name, value, size, flags)
}
