import ArgumentParser
import Foundation
import KangarooChunks
import KangarooLazyFS
import KangarooP2P
import KangarooSystem
import Logging

extension ImageCommand {
    struct Preheat: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fetch an image's prefetch list (or all of it) into the chunk cache ahead of a burst, here or on other nodes.",
            discussion: """
            Without --nodes, this node fetches the chunks into --cache, verified, as a mount's prefetch would, \
            without mounting; with --trackers the chunks other nodes hold come from them and the rest from the \
            registry. With --nodes HOST:PORT,..., each node's peer (kangaroo peer, or the node daemon's \
            --peer-listen) preheats its own cache: nodes that share trackers each seed different chunks and \
            take the rest from each other, so the registry serves about one copy in total. docs/P2P.md.
            """)

        @OptionGroup var options: GlobalOptions
        @Argument(help: "The image (registry reference, store name or oci:DIR:TAG).") var reference: String
        @OptionGroup var chunks: ChunkSourceOptions
        @Flag(help: "Every chunk of the image, not only its prefetch list.") var all = false
        @Option(help: "Concurrent fetch workers.") var concurrency: Int = 4
        @Flag(help: "Keep the compressed bytes of compressed chunks too (for a peer; implied by --trackers).") var keepCompressed = false
        @Option(help: "Preheat on these nodes' peers instead (HOST:PORT,...; their cluster token from --peer-token-file).")
        var nodes: String?
        @Option(help: "Seconds to wait for the nodes (with --nodes).") var timeout: Double = 3600
        @Flag(help: "Print the result as JSON.") var json = false

        func run() async throws {
            let logger = options.makeLogger("kangaroo.preheat")
            do {
                guard concurrency >= 1, concurrency <= 64 else { throw CLIError("--concurrency \(concurrency) is not between 1 and 64") }
                if let nodes { return try await remote(nodes, logger: logger) }
                let summary = try await local(logger: logger)
                if json {
                    print(String(decoding: try JSONEncoder().encode(summary), as: UTF8.self))
                } else {
                    print("preheated \(reference): \(summary.chunks) chunks in \(String(format: "%.2f", summary.seconds)) s, "
                          + "\(formatBytes(Int64(summary.bytesFromRegistry))) from the registry, \(formatBytes(Int64(summary.bytesFromPeers))) from peers")
                }
            } catch {
                fail(error)
            }
        }

        func local(logger: Logger) async throws -> PreheatSummary {
            let started = Date()
            let (image, source, close) = try await chunks.resolve(reference, options: options, logger: logger)
            var fetch = chunks.fetchConfiguration
            fetch.keepCompressed = fetch.keepCompressed || keepCompressed
            let progress = TerminalProgress(enabled: options.showProgress)
            let result: KangarooLazyFS.Preheat.Result
            do {
                result = try KangarooLazyFS.Preheat.run(image.bootstrap, source: source, cacheDirectory: MountControl.normalize(chunks.cache),
                                                        mode: all ? .all : .list, fetch: fetch, concurrency: concurrency, logger: logger) { done, total in
                    progress.update("preheating chunks", done: Int64(done), total: Int64(total), unit: .items)
                }
            } catch {
                progress.finish()
                await close?()
                throw error
            }
            progress.finish()
            await close?()
            let sources = result.stats.sources ?? []
            func bytes(_ roles: Set<String>) -> UInt64 { sources.filter { roles.contains($0.role) }.reduce(0) { $0 + $1.bytes } }
            return PreheatSummary(reference: reference, chunks: result.chunks, bytesFromRegistry: bytes(["origin", "mirror"]),
                                  bytesFromPeers: bytes(["peer"]), seconds: Date().timeIntervalSince(started))
        }

        /// Starts a job on every node's peer at once, then follows them.
        func remote(_ nodes: String, logger: Logger) async throws {
            let list = nodes.split(separator: ",").map(String.init)
            guard !list.isEmpty else { throw CLIError("--nodes '\(nodes)' names no HOST:PORT") }
            for node in list { _ = try parseHostPort(node, option: "--nodes") }
            guard let file = chunks.peerTokenFile else { throw CLIError("--nodes needs --peer-token-file (the cluster token the peers check)") }
            let token = try readClusterToken(file)
            let client = PreheatClient(token: token)
            defer { client.shutdown() }
            var jobs: [(node: String, id: String)] = []
            for node in list { jobs.append((node, try await client.start(node, PreheatRequest(reference: reference, all: all)).id)) }
            let limit = Date().addingTimeInterval(timeout)
            var finished: [String: PreheatJob] = [:]
            let progress = TerminalProgress(enabled: options.showProgress)
            while finished.count < jobs.count {
                for (node, id) in jobs where finished[node] == nil {
                    let job = try await client.job(node, id)
                    if job.state != .running { finished[node] = job }
                }
                progress.update("nodes done", done: Int64(finished.count), total: Int64(jobs.count), unit: .items)
                if finished.count < jobs.count {
                    guard Date() < limit else {
                        progress.finish()
                        throw CLIError("preheat: \(jobs.count - finished.count) of \(jobs.count) nodes did not finish within \(timeout) s")
                    }
                    try await Task.sleep(for: .milliseconds(200))
                }
            }
            progress.finish()
            let ordered = list.map { finished[$0]! }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(decoding: try encoder.encode(Dictionary(uniqueKeysWithValues: zip(list, ordered))), as: UTF8.self))
            } else {
                for (node, job) in zip(list, ordered) {
                    if let s = job.summary {
                        print("\(node): \(s.chunks) chunks in \(String(format: "%.2f", s.seconds)) s, \(formatBytes(Int64(s.bytesFromRegistry))) from the registry, \(formatBytes(Int64(s.bytesFromPeers))) from peers")
                    } else {
                        print("\(node): failed: \(job.error ?? "no reason given")")
                    }
                }
                let registry = ordered.compactMap(\.summary).reduce(UInt64(0)) { $0 + $1.bytesFromRegistry }
                print("registry: \(formatBytes(Int64(registry))) in total for \(list.count) nodes")
            }
            let failed = ordered.filter { $0.state == .failed }.count
            if failed > 0 { throw CLIError("preheat failed on \(failed) of \(list.count) nodes") }
        }
    }
}

/// The preheat a peer runs for POST /v1/preheat: this executable as
/// `kangaroo image preheat REF --json` on the peer's cache, with `args`
/// (store, registry hosts, P2P options). Waited for through `reaper` when
/// the caller reaps its children (the node daemon), else directly.
func preheatProcess(_ request: PreheatRequest, cache: String, args: [String], reaper: Reaper?, logger: Logger) async throws -> PreheatSummary {
    var argv = ["image", "preheat", "--json", "--quiet", "--cache", cache] + args
    if request.all { argv.append("--all") }
    argv += ["--", request.reference]
    let out = try ScratchFile(), errors = try ScratchFile()
    let null = open("/dev/null", O_RDWR | O_CLOEXEC)
    defer { if null >= 0 { close(null) } }
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "kangaroo"
    let pid = try spawnProgram("/proc/self/exe", argv, stdin: null, stdout: out.fd, stderr: errors.fd, name: exe)
    let status: Int32 = await withCheckedContinuation { continuation in
        if let reaper {
            reaper.watch(pid) { _, raw in continuation.resume(returning: RuntimeClient.exitCode(raw)) }
        } else {
            Thread.detachNewThread { continuation.resume(returning: RuntimeClient.wait(pid)) }
        }
    }
    let text = errors.contents().trimmingCharacters(in: .whitespacesAndNewlines)
    if !text.isEmpty { logger.info("preheat of \(request.reference): its log", metadata: ["log": "\(text.suffix(20000))"]) }
    guard status == 0 else {
        throw CLIError("preheat of \(request.reference) failed (status \(status))" + (text.isEmpty ? "" : ": " + String(text.suffix(2000))))
    }
    do { return try JSONDecoder().decode(PreheatSummary.self, from: Data(out.contents().utf8)) } catch {
        throw CLIError("preheat of \(request.reference): its output is not a summary: \(out.contents().prefix(500))")
    }
}
