import ArgumentParser
import Foundation
import KangarooChunks
import KangarooImage
import KangarooLazyFS
import KangarooOCI
import KangarooP2P
import Logging

extension ImageCommand {
    struct Mount: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Mount a Kangaroo image lazily: only the bootstrap is fetched first, file data on first read.",
            discussion: """
            REF is a store name, oci:DIR[:TAG] or a registry reference (then only the manifest, config and \
            bootstrap are pulled; chunks come with HTTP range requests). Chunks are verified and kept in the \
            chunk cache (--cache). --mode kernel mounts with the kernel's EROFS driver from a complete cache; \
            auto picks kernel when the cache is complete, FUSE otherwise. Runs in the foreground until \
            unmounted (kangaroo image umount) or interrupted, or detached with --daemon.
            """)

        @OptionGroup var options: GlobalOptions
        @Argument(help: "The image (store name, registry reference or oci:DIR:TAG).") var reference: String
        @Argument(help: "Where to mount it (an existing directory).") var mountPoint: String
        @OptionGroup var chunks: ChunkSourceOptions
        @Option(help: "Background prefetch after mounting: none, list (the image's prefetch list) or all.")
        var prefetch: String = "list"
        @Option(help: "fuse, kernel (needs a complete cache) or auto.") var mode: String = "auto"
        @Flag(help: "Detach: return once the mount is ready, the daemon keeps serving it.") var daemon = false
        @Option(help: "Merge chunk requests whose compressed ranges are at most this far apart (bytes; K/M allowed).")
        var mergeGap: String = "0"
        @Option(help: "FUSE worker threads.") var threads: Int = 16
        @Option(help: "Requests through FUSE over io_uring when the kernel offers it (fuse module parameter enable_uring): auto or off.")
        var ioUring: String = "auto"
        @Option(help: "After a directory listing, push its regular files up to this size into the page cache when their chunks are cached (bytes, K/M allowed; 0: off).")
        var prefillSmallFiles: String = "64K"
        @Option(help: "Concurrent prefetch workers.") var prefetchConcurrency: Int = 2
        @Option(help: "Cap the bandwidth taken from the source, bytes per second (K/M/G allowed; 0: no cap).")
        var maxRate: String = "0"
        @Option(help: "Serve Prometheus metrics on HOST:PORT (GET /metrics; an IPv4 address, e.g. 127.0.0.1:9464).")
        var metrics: String?
        @Option(help: "Record the files opened, in first-access order, into this prefetch list file.") var trace: String?
        @Flag(help: "Keep the compressed bytes of compressed chunks in the cache too, so that `kangaroo peer` can serve them to other nodes (costs their size on disk).")
        var keepCompressed = false
        @Flag(help: "Let a keeper (the node daemon) hold the FUSE connection, so that a new server can take the mount over if this one dies (no io_uring).")
        var failover = false
        @Option(help: .hidden) var takeoverFd: Int32?

        func run() async throws {
            let started = Date()
            let logger = options.makeLogger("kangaroo.lazyfs")
            do {
                guard let prefetchMode = PrefetchMode(rawValue: prefetch) else {
                    throw CLIError("--prefetch '\(prefetch)' is not one of none, list, all")
                }
                guard ["fuse", "kernel", "auto"].contains(mode) else { throw CLIError("--mode '\(mode)' is not one of fuse, kernel, auto") }
                guard let gap = parseSize(mergeGap) else { throw CLIError("--merge-gap '\(mergeGap)' is not a size") }
                try chunks.validate()
                let metricsAddress: (host: String, port: UInt16)? = try metrics.map { text in
                    let parts = text.split(separator: ":")
                    guard parts.count == 2, let port = UInt16(parts[1]) else {
                        throw CLIError("--metrics '\(text)' is not HOST:PORT (e.g. 127.0.0.1:9464)")
                    }
                    return (String(parts[0]), port)
                }
                guard ["auto", "off"].contains(ioUring) else { throw CLIError("--io-uring '\(ioUring)' is not one of auto, off") }
                guard let prefillSize = parseSize(prefillSmallFiles), prefillSize >= 0, prefillSize <= 1 << 20 else {
                    throw CLIError("--prefill-small-files '\(prefillSmallFiles)' is not a size from 0 to 1M")
                }
                guard let rate = parseSize(maxRate), rate >= 0 else { throw CLIError("--max-rate '\(maxRate)' is not a size (bytes per second, K/M/G allowed)") }
                let mountPoint = MountControl.normalize(self.mountPoint)
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: mountPoint, isDirectory: &isDirectory), isDirectory.boolValue else {
                    throw CLIError("mount point \(mountPoint) is not a directory")
                }
                if DaemonFork.isChild {
                    // Errors before this point are the parent's to report.
                    try? MountControl.makeRunDirectory()
                    DaemonFork.redirectOutput(to: Self.logPath(mountPoint))
                }
                if daemon { return try spawnDaemon(mountPoint: mountPoint) }

                let cacheDirectory = MountControl.normalize(chunks.cache)
                let (image, resolved, closeSource) = try await chunks.resolve(reference, options: options, logger: logger)
                do {
                    let source: any ChunkSource = rate > 0 ? RateLimitedChunkSource(resolved, bytesPerSecond: UInt64(rate)) : resolved
                    var takeover: LazyMount.Takeover?
                    if let fd = takeoverFd {
                        // A keeper hands over the connection of a dead server:
                        // serve it as that server did (its state file says how).
                        guard let old = MountControl.readState(mountPoint), old.mode == "fuse", let minor = old.fuseMinor,
                              let flags = old.fuseFlags, MountControl.mountedType(mountPoint) == "fuse.kangaroo" else {
                            throw CLIError("--takeover-fd: \(mountPoint) is not a failover FUSE mount of kangaroo image mount")
                        }
                        takeover = LazyMount.Takeover(descriptor: fd, minor: minor, rawFlags: flags)
                    }
                    let complete = try ChunkCache(directory: cacheDirectory, bootstrap: image.bootstrap).isComplete
                    if takeover == nil && (mode == "kernel" || (mode == "auto" && complete)) {
                        try KernelMount.mount(image: image, cacheDirectory: cacheDirectory, at: mountPoint)
                        emit("mounted \(reference) at \(mountPoint) (kernel erofs) in \(milliseconds(since: started)) ms")
                        try MountControl.writeState(.init(pid: 0, mountPoint: mountPoint, cacheDirectory: cacheDirectory,
                                                          mode: "kernel", image: reference))
                        await closeSource?()
                        return
                    }

                    var mountOptions = LazyMount.Options(mountPoint: mountPoint, cacheDirectory: cacheDirectory)
                    mountOptions.prefetch = prefetchMode
                    mountOptions.prefetchConcurrency = max(1, prefetchConcurrency)
                    mountOptions.threads = max(1, threads)
                    mountOptions.ioUring = ioUring == "auto"
                    mountOptions.prefill = prefillSize > 0 ? LazyFileSystem.Prefill(maxFileSize: prefillSize) : .off
                    mountOptions.fetch = chunks.fetchConfiguration
                    mountOptions.fetch.mergeGap = UInt64(gap)
                    mountOptions.fetch.keepCompressed = mountOptions.fetch.keepCompressed || keepCompressed  // trackers imply it
                    mountOptions.tracePath = trace.map(MountControl.normalize)
                    mountOptions.statsPath = MountControl.statsPath(mountPoint)
                    mountOptions.metricsAddress = metricsAddress
                    mountOptions.failover = failover
                    mountOptions.takeover = takeover
                    try MountControl.makeRunDirectory()
                    let lazy = try LazyMount(image: image, source: source, options: mountOptions, logger: logger)
                    try lazy.start()
                    emit("\(takeover == nil ? "mounted" : "took over") \(reference) at \(mountPoint) (fuse) in \(milliseconds(since: started)) ms")
                    if let address = metricsAddress, let port = lazy.metricsPort {
                        emit("metrics at http://\(address.host):\(port)/metrics")
                    }
                    var state = MountControl.State(pid: getpid(), mountPoint: mountPoint, cacheDirectory: cacheDirectory,
                                                   mode: "fuse", image: reference)
                    if let f = lazy.failoverState {
                        state.fuseDescriptor = f.descriptor
                        state.fuseMinor = f.minor
                        state.fuseFlags = f.flags
                    }
                    try MountControl.writeState(state)

                    let signals = installSignalHandlers { try? lazy.stop() }
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        Thread.detachNewThread {
                            lazy.wait()
                            continuation.resume()
                        }
                    }
                    _ = signals
                    if MountControl.readState(mountPoint)?.pid == getpid() { MountControl.removeState(mountPoint) }
                    await closeSource?()
                } catch {
                    // Its HTTP clients must be shut down before they go (a trap otherwise).
                    await closeSource?()
                    throw error
                }
            } catch {
                fail(error)
            }
        }

        /// Re-runs this command without --daemon in a new session and returns
        /// once its mount is up (or it failed).
        static func logPath(_ mountPoint: String) -> String {
            MountControl.logPath(mountPoint)
        }

        /// The daemon: the child forked at program start (main.swift), or,
        /// when that was not possible, this program run again without
        /// --daemon in a new session.
        func spawnDaemon(mountPoint: String) throws {
            try MountControl.makeRunDirectory()
            let logPath = Self.logPath(mountPoint)
            let before = MountControl.mountedType(mountPoint)
            let daemon: DaemonChild
            if let pid = DaemonFork.childPID {
                daemon = .forked(pid)
            } else {
                let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
                let args = CommandLine.arguments.dropFirst().filter { $0 != "--daemon" }
                _ = FileManager.default.createFile(atPath: logPath, contents: nil)
                let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
                let process = Process()
                process.executableURL = URL(fileURLWithPath: "/usr/bin/setsid")
                process.arguments = [exe] + args
                process.standardInput = FileHandle.nullDevice
                process.standardOutput = log
                process.standardError = log
                try process.run()
                daemon = .spawned(process)
            }
            let limit = Date().addingTimeInterval(300)
            while Date() < limit {
                let now = MountControl.mountedType(mountPoint)
                let ready: Bool
                switch daemon {
                case .forked(let pid):
                    // The child may mount before this parent got here, so no
                    // before/after comparison: its state file names it. (A
                    // kernel mount's child exits 0 instead, handled below.)
                    ready = now == "fuse.kangaroo" && MountControl.readState(mountPoint)?.pid == pid
                case .spawned:
                    ready = now != nil && (now == "fuse.kangaroo" || now == "erofs") && now != before
                        && MountControl.readState(mountPoint).map { $0.mode == "kernel" || MountControl.isAlive($0.pid) } == true
                }
                if let now, ready, let state = MountControl.readState(mountPoint) {
                    let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
                    print(text.split(separator: "\n").first(where: { $0.hasPrefix("mounted") }).map(String.init)
                          ?? "mounted \(reference) at \(mountPoint) (\(now))")
                    if let metricsLine = text.split(separator: "\n").first(where: { $0.hasPrefix("metrics at ") }) { print(metricsLine) }
                    if state.mode == "fuse" { print("daemon pid \(state.pid), log \(logPath)") }
                    return
                }
                if let status = daemon.exitStatus() {
                    let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
                    if status == 0, MountControl.mountedType(mountPoint) == "erofs" {
                        print(text.trimmingCharacters(in: .whitespacesAndNewlines))
                        return
                    }
                    throw CLIError("mount daemon exited with status \(status):\n\(text.suffix(2000))")
                }
                usleep(2_000)
            }
            throw CLIError("mount daemon did not mount \(mountPoint) within 300 s (log: \(logPath))")
        }
    }

    struct Umount: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "umount",
            abstract: "Unmount a lazy mount and stop its daemon; also removes a dead mount left by a crashed daemon.")

        @OptionGroup var options: GlobalOptions
        @Argument(help: "The mount point.") var mountPoint: String

        func run() async throws {
            do { print(try MountControl.unmount(mountPoint)) } catch { fail(error) }
        }
    }

    struct Stats: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a lazy mount's counters: bytes fetched, chunks cached, cache hits, fetch latency, errors.")

        @OptionGroup var options: GlobalOptions
        @Argument(help: "The mount point.") var mountPoint: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let path = MountControl.normalize(mountPoint)
            guard let s = MountControl.readStats(path) else {
                let state = MountControl.readState(path)
                fail(CLIError(state?.mode == "kernel" ? "\(path) is a kernel EROFS mount: every chunk is cached, nothing is fetched"
                              : "no stats for \(path): not a lazy FUSE mount made by kangaroo image mount"))
            }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: (try? encoder.encode(s)) ?? Data(), as: UTF8.self))
                return
            }
            func row(_ k: String, _ v: String) { print(k.padding(toLength: 16, withPad: " ", startingAt: 0) + v) }
            row("mount", "\(s.mountPoint) (\(s.mode), pid \(s.pid))")
            row("fetched", "\(formatBytes(Int64(s.bytesFetched))) in \(s.rangeRequests) range requests, \(s.chunksFetched) chunks")
            row("cached", "\(s.chunksCached) of \(s.chunksTotal) chunks")
            row("cache", "\(s.cacheHits) hits, \(s.cacheMisses) misses")
            row("latency", String(format: "p50 %.1f ms, p90 %.1f ms, p99 %.1f ms", s.fetchLatencyP50Ms, s.fetchLatencyP90Ms, s.fetchLatencyP99Ms))
            row("in flight", "\(s.inFlight) chunks")
            row("errors", "\(s.errors) (\(s.verificationFailures) verification, \(s.timeouts) timeouts)")
            for source in s.sources ?? [] {
                row(source.role, "\(source.name): \(formatBytes(Int64(source.bytes))) in \(source.requests) requests, \(source.failures) failed, \(source.state)")
            }
            row("prefetch", s.prefetchDone ? "done" : "running")
            row("updated", String(format: "%.1f s ago", Date().timeIntervalSince1970 - s.updatedAt))
        }
    }
}

/// Writes a line to stdout unbuffered (the daemon's parent reads it from the log).
private func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

private func milliseconds(since start: Date) -> String {
    String(format: "%.1f", Date().timeIntervalSince(start) * 1000)
}

/// SIGINT/SIGTERM run `handler` once (on a background thread).
private func installSignalHandlers(_ handler: @escaping @Sendable () -> Void) -> [DispatchSourceSignal] {
    [SIGINT, SIGTERM].map { sig in
        signal(sig, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        source.setEventHandler { Thread.detachNewThread { handler() } }
        source.resume()
        return source
    }
}

/// The mount daemon the --daemon parent waits for.
enum DaemonChild {
    case forked(pid_t)
    case spawned(Process)

    /// The exit status once it has exited, nil while it runs.
    func exitStatus() -> Int32? {
        switch self {
        case .forked(let pid):
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == 0 { return nil }
            if r < 0 { return -1 }
            return RuntimeClient.exitCode(status)
        case .spawned(let process):
            return process.isRunning ? nil : process.terminationStatus
        }
    }
}
