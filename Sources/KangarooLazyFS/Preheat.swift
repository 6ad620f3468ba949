import Dispatch
import Foundation
import KangarooImage
import Logging

/// Fills a chunk cache with an image's chunks ahead of its mounts
/// (`kangaroo image preheat`): the prefetch list, or every chunk, fetched,
/// verified and stored as a mount's prefetch would, without mounting. With
/// a P2P source, nodes preheating together each seed different chunks and
/// take the rest from each other, so the registry serves about one copy.
public enum Preheat {
    public struct Result: Sendable {
        /// Chunks of the mode, and how many of them are cached now.
        public var chunks: Int
        public var cached: Int
        public var stats: LazyStats
    }

    /// Blocks until the chunks are cached or a batch failed; `progress`
    /// gets (cached, total) about every 200 ms.
    public static func run(_ bootstrap: Bootstrap, source: any ChunkSource, cacheDirectory: String, mode: PrefetchMode,
                           fetch: FetchConfiguration, concurrency: Int, logger: Logger,
                           progress: (@Sendable (Int, Int) -> Void)? = nil) throws(LazyFSError) -> Result {
        let cache = try ChunkCache(directory: cacheDirectory, bootstrap: bootstrap)
        let fetcher = ChunkFetcher(bootstrap: bootstrap, source: source, cache: cache, configuration: fetch, logger: logger)
        let wanted = Prefetcher.order(bootstrap, mode: mode, logger: logger)
        func cachedCount() -> Int { wanted.reduce(0) { $0 + (cache.isCached($1) ? 1 : 0) } }
        let done = DispatchSemaphore(value: 0)
        Prefetcher.run(fetcher, mode: mode, concurrency: concurrency, logger: logger) { _ in done.signal() }
        while done.wait(timeout: .now() + 0.2) == .timedOut { progress?(cachedCount(), wanted.count) }
        let cached = cachedCount()
        progress?(cached, wanted.count)
        let result = Result(chunks: wanted.count, cached: cached, stats: fetcher.stats())
        guard cached == wanted.count else {
            throw LazyFSError(.fetch, "preheat: \(wanted.count - cached) of \(wanted.count) chunks could not be fetched (the log says why)")
        }
        return result
    }
}
