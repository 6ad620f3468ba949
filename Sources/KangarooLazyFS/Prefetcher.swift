import Foundation
import KangarooImage
import Logging

/// What to fetch in the background after mounting.
public enum PrefetchMode: String, Sendable, CaseIterable {
    /// Nothing: only on-demand reads fetch.
    case none
    /// The image's prefetch list (files in recorded first-access order).
    case list
    /// The prefetch list, then every other chunk in blob order.
    case all
}

/// Background prefetch with bounded concurrency. On-demand reads never wait
/// for it: they start their own fetches (the in-flight table shares chunks
/// both want).
enum Prefetcher {
    /// ToC chunk indexes of the prefetch list's files, in list order.
    static func listChunks(_ bootstrap: Bootstrap, logger: Logger) -> [Int] {
        var out: [Int] = []
        var seen: Set<Int> = []
        for path in bootstrap.prefetch {
            guard let inode = try? bootstrap.lookup(path: path), inode.kind == .regular,
                  let map = try? bootstrap.chunkMap(inode) else {
                logger.debug("lazyfs: prefetch entry \(path) is not a regular file of the image")
                continue
            }
            for location in map {
                guard let location, let index = bootstrap.extensionRegion.chunkIndex(at: location) else { continue }
                if seen.insert(index).inserted { out.append(index) }
            }
        }
        return out
    }

    /// The chunks `mode` fetches, in order.
    static func order(_ bootstrap: Bootstrap, mode: PrefetchMode, logger: Logger) -> [Int] {
        guard mode != .none else { return [] }
        var order = listChunks(bootstrap, logger: logger)
        if mode == .all {
            let listed = Set(order)
            order += bootstrap.chunks.indices.filter { !listed.contains($0) }
        }
        return order
    }

    /// Fetches `mode`'s chunks with `concurrency` workers (each a batch of
    /// up to `batch` chunks at a time, merged into range requests); calls
    /// `done` at the end.
    static func run(_ fetcher: ChunkFetcher, mode: PrefetchMode, concurrency: Int = 2, batch: Int = 16,
                    logger: Logger, done: @escaping @Sendable (Bool) -> Void) {
        guard mode != .none else { done(true); return }
        let pending = order(fetcher.bootstrap, mode: mode, logger: logger).filter { !fetcher.cache.isCached($0) }
        var batches: [[Int]] = []
        var i = 0
        while i < pending.count {
            batches.append(Array(pending[i..<min(pending.count, i + batch)]))
            i += batch
        }
        let queue = BatchQueue(batches)
        let group = DispatchGroup()
        let failures = Counter()
        logger.info("lazyfs: prefetching \(pending.count) chunks (\(mode.rawValue))")
        for _ in 0..<max(1, concurrency) {
            group.enter()
            Thread.detachNewThread {
                while let next = queue.next() {
                    if !fetcher.prefetch(next) { failures.increment() }
                }
                group.leave()
            }
        }
        group.notify(queue: .global()) {
            logger.info("lazyfs: prefetch finished, \(failures.value) failed batches")
            done(failures.value == 0)
        }
    }
}

final class BatchQueue: @unchecked Sendable {
    private let lock = NSLock()
    private var batches: [[Int]]
    private var position = 0
    init(_ batches: [[Int]]) { self.batches = batches }
    func next() -> [Int]? {
        lock.lock()
        defer { lock.unlock() }
        guard position < batches.count else { return nil }
        position += 1
        return batches[position - 1]
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func increment() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}
