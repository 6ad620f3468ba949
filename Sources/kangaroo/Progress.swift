import Foundation
import Synchronization

/// Renders progress on one terminal line of stderr; silent when disabled
/// (`--quiet`, or stderr is not a terminal).
final class TerminalProgress: Sendable {
    private struct State {
        var phase = ""
        var lastDraw: UInt64 = 0
        var drawn = false
    }

    private let enabled: Bool
    private let state = Mutex(State())

    init(enabled: Bool) { self.enabled = enabled }

    /// Updates the line at most 10 times a second (and always on phase change).
    func update(_ phase: String, done: Int64, total: Int64?, unit: Unit = .bytes) {
        guard enabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        state.withLock { s in
            let phaseChanged = phase != s.phase
            guard phaseChanged || now - s.lastDraw > 100_000_000 || (total != nil && done == total) else { return }
            s.phase = phase
            s.lastDraw = now
            s.drawn = true
            var line = "\r\u{1B}[2K\(phase): \(unit.format(done))"
            if let total, total > 0 {
                let pct = Double(done) * 100 / Double(total)
                line += " / \(unit.format(total)) (\(String(format: "%.0f", pct))%)"
            }
            FileHandle.standardError.write(Data(line.utf8))
        }
    }

    /// Clears the progress line.
    func finish() {
        guard enabled else { return }
        state.withLock { s in
            if s.drawn { FileHandle.standardError.write(Data("\r\u{1B}[2K".utf8)) }
            s.drawn = false
        }
    }

    enum Unit {
        case bytes, items
        func format(_ v: Int64) -> String {
            switch self {
            case .items: return "\(v)"
            case .bytes: return formatBytes(v)
            }
        }
    }
}

func formatBytes(_ v: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(v)
    var i = 0
    while value >= 1024 && i < units.count - 1 { value /= 1024; i += 1 }
    return i == 0 ? "\(v) B" : String(format: "%.1f", value) + " " + units[i]
}
