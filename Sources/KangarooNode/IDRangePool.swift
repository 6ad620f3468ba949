#if canImport(Glibc)
import Glibc
#endif
import KangarooSystem

/// Host id ranges for user-namespaced sandboxes: range k is
/// `first + k * size ..< first + (k + 1) * size`, one per owner, never two
/// owners at once, in `DIR/idranges.json` under `DIR/lock`.
public struct IDRangePool: Sendable {
    public let directory: String
    /// The first host id handed out (default 2^30: far above the ranges
    /// /etc/subuid usually gives users; 16384 ranges end below 2^31).
    public let first: UInt32
    public let size: UInt32
    public let count: Int

    public init(directory: String, first: UInt32 = 1 << 30, size: UInt32 = 65536, count: Int = 16384) {
        self.directory = directory
        self.first = first
        self.size = size
        self.count = count
    }

    var path: String { directory + "/idranges.json" }

    func read() throws(DiskError) -> [String: Int] {
        guard FileSystem.exists(path) else { return [:] }
        guard let text = try? FileSystem.readString(path), let json = try? JSON.parse(text), case let .object(members)? = json["ranges"] else {
            throw DiskError("\(path) is damaged; move it away to start the id ranges afresh")
        }
        var out: [String: Int] = [:]
        for (owner, v) in members { if let k = v.int { out[owner] = k } }
        return out
    }

    func update<T>(_ body: (inout [String: Int]) throws(DiskError) -> T) throws(DiskError) -> T {
        do { try FileSystem.makeDirectories(directory, mode: 0o700) } catch { throw DiskError("cannot create \(directory)", underlying: error) }
        do {
            return try FileSystem.withExclusiveLock(directory + "/idranges.lock") { () throws(DiskError) -> T in
                let before = try read()
                var ranges = before
                let result = try body(&ranges)
                if ranges != before {
                    let text = JSON.object([("ranges", .object(ranges.sorted { $0.value < $1.value }.map { ($0.key, .int($0.value)) }))]).serialized() + "\n"
                    do { try FileSystem.replace(path, text) } catch { throw DiskError("cannot write \(path)", underlying: error) }
                }
                return result
            }
        } catch {
            switch error {
            case .lock(let e): throw DiskError("cannot lock \(directory)/idranges.lock", underlying: e)
            case .body(let e): throw e
            }
        }
    }

    /// The owner's first host id (the same on a second call).
    public func acquire(owner: String) throws(DiskError) -> UInt32 {
        let k = try update { (ranges: inout [String: Int]) throws(DiskError) -> Int in
            if let k = ranges[owner] { return k }
            let taken = Set(ranges.values)
            guard let k = (0..<count).first(where: { !taken.contains($0) }) else {
                throw DiskError("all \(count) id ranges are taken")
            }
            ranges[owner] = k
            return k
        }
        return first + UInt32(k) * size
    }

    /// Gives the owner's range back; false when it had none.
    @discardableResult
    public func release(owner: String) throws(DiskError) -> Bool {
        try update { (ranges: inout [String: Int]) throws(DiskError) -> Bool in ranges.removeValue(forKey: owner) != nil }
    }

    public func owners() throws(DiskError) -> [String: UInt32] {
        try read().mapValues { first + UInt32($0) * size }
    }
}
