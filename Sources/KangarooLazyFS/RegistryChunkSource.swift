import Dispatch
import KangarooImage
import KangarooOCI
import Synchronization

/// Reads compressed chunk ranges with HTTP range GETs from a registry. The
/// blocking `read` bridges to the async client and gives up after `timeout`
/// (the fetcher retries within its deadline).
public final class RegistryChunkSource: ChunkSource {
    let client: RegistryClient
    let repository: String
    let digests: [Digest]
    let timeout: Duration

    public init(client: RegistryClient, repository: String, image: KangarooImage, timeout: Duration = .seconds(30)) {
        self.client = client
        self.repository = repository
        self.digests = image.blobDescriptors.map(\.digest)
        self.timeout = timeout
    }

    public func read(blob: Int, range: Range<UInt64>) throws -> [UInt8] {
        guard digests.indices.contains(blob) else { throw LazyFSError(.fetch, "blob index \(blob) out of range") }
        let result = ResultBox()
        let done = DispatchSemaphore(value: 0)
        let client = self.client, repository = self.repository, digest = digests[blob]
        let task = Task {
            do {
                let bytes = try await client.fetchBlobRange(repository: repository, digest: digest,
                                                            range: Int64(range.lowerBound)..<Int64(range.upperBound))
                result.set(.success(bytes))
            } catch {
                result.set(.failure(LazyFSErrorBox(error)))
            }
            done.signal()
        }
        if done.wait(timeout: .now() + ChunkFetcher.seconds(timeout)) == .timedOut {
            task.cancel()
            throw LazyFSError(.timeout, "range \(range) of \(digest) from \(repository): no answer within \(timeout)")
        }
        switch result.get() {
        case .success(let bytes)?:
            guard bytes.count == range.count else {
                throw LazyFSError(.fetch, "range \(range) of \(digest): registry returned \(bytes.count) bytes")
            }
            return bytes
        case .failure(let error)?: throw LazyFSError(.fetch, "range \(range) of \(digest) from \(repository) failed", underlying: error)
        case nil: throw LazyFSError(.fetch, "range \(range) of \(digest): no result")
        }
    }
}

final class ResultBox: Sendable {
    private let value = Mutex<Result<[UInt8], LazyFSErrorBox>?>(nil)
    func set(_ result: Result<[UInt8], LazyFSErrorBox>) { value.withLock { $0 = result } }
    func get() -> Result<[UInt8], LazyFSErrorBox>? { value.withLock { $0 } }
}
