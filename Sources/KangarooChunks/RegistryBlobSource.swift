import Dispatch
import KangarooOCI
import Synchronization

/// Reads blob ranges with HTTP range GETs from one registry host (the
/// registry or a mirror). The blocking `read` bridges to the async client
/// and gives up after `timeout`.
public final class RegistryBlobSource: BlobSource {
    public let client: RegistryClient
    public let repository: String
    let timeout: Duration

    public init(client: RegistryClient, repository: String, timeout: Duration = .seconds(30)) {
        self.client = client
        self.repository = repository
        self.timeout = timeout
    }

    /// One host: `accept` is the caller's to apply.
    public func read(_ digest: Digest, range: Range<UInt64>, accept: ([UInt8]) -> Bool) throws(ChunksError) -> [UInt8] {
        let result = Mutex<Result<[UInt8], OCIError>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let client = self.client, repository = self.repository
        let task = Task {
            do throws(OCIError) {
                let bytes = try await client.fetchBlobRange(repository: repository, digest: digest,
                                                            range: Int64(range.lowerBound)..<Int64(range.upperBound))
                result.withLock { $0 = .success(bytes) }
            } catch {
                result.withLock { $0 = .failure(error) }
            }
            done.signal()
        }
        let (seconds, atto) = timeout.components
        if done.wait(timeout: .now() + Double(seconds) + Double(atto) / 1e18) == .timedOut {
            task.cancel()
            throw ChunksError(.timeout, "bytes \(range) of \(digest) from \(client.host)/\(repository): no answer within \(timeout)")
        }
        let what = "bytes \(range) of \(digest) from \(client.host)/\(repository)"
        switch result.withLock({ $0 }) {
        case .success(let bytes)?:
            guard bytes.count == range.count else {
                throw ChunksError(.unavailable, "\(what): got \(bytes.count) bytes")
            }
            return bytes
        case .failure(let error)?:
            switch error.code {
            case .notFound: throw ChunksError(.notFound, "\(what): not there", underlying: error)
            case .timeout: throw ChunksError(.timeout, "\(what) timed out", underlying: error)
            default: throw ChunksError(.unavailable, "\(what) failed", underlying: error)
            }
        case nil: throw ChunksError(.unavailable, "\(what): no result")
        }
    }
}
