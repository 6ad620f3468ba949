import Foundation
import Synchronization

/// Records the files a workload opens, in first-access order, as a prefetch
/// list (`kangaroo image convert --prefetch-list` reads it: one absolute path
/// a line).
public final class AccessTrace: Sendable {
    private struct State {
        var paths: [UInt64: String] = [:]
        var seen: Set<UInt64> = []
        var order: [String] = []
    }

    private let state: Mutex<State>
    public let outputPath: String

    public init(outputPath: String, rootNid: UInt64) {
        self.outputPath = outputPath
        var s = State()
        s.paths[rootNid] = ""
        state = Mutex(s)
    }

    func noteLookup(parent: UInt64, name: [UInt8], child: UInt64) {
        state.withLock { s in
            guard s.paths[child] == nil, let base = s.paths[parent] else { return }
            s.paths[child] = base + "/" + String(decoding: name, as: UTF8.self)
        }
    }

    func noteOpen(_ nid: UInt64) {
        state.withLock { s in
            guard let path = s.paths[nid], s.seen.insert(nid).inserted else { return }
            s.order.append(path)
        }
    }

    /// Paths opened so far, first access first.
    public var paths: [String] { state.withLock { $0.order } }

    /// Writes the list (atomically: temporary file + rename).
    public func write() throws {
        let text = "# kangaroo prefetch list: files in first-access order\n" + paths.map { $0 + "\n" }.joined()
        try Data(text.utf8).write(to: URL(fileURLWithPath: outputPath), options: .atomic)
    }
}
