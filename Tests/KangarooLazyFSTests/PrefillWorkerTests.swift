import Foundation
import Synchronization
import Testing
@testable import KangarooLazyFS

final class Log: Sendable {
    private let entries = Mutex<[Int]>([])
    func append(_ value: Int) { entries.withLock { $0.append(value) } }
    var values: [Int] { entries.withLock { $0 } }

    /// Waits until there are `count` entries (or 5 s).
    func waitFor(count: Int) {
        let deadline = ContinuousClock.now + .seconds(5)
        while values.count < count && ContinuousClock.now < deadline { usleep(5_000) }
    }
}

@Suite struct PrefillWorkerTests {
    @Test func runsInOrderDropsOverflowAndStaleWorkAndStops() {
        let worker = PrefillWorker(limit: 3, maxAge: .milliseconds(200))
        let log = Log()
        let gate = DispatchSemaphore(value: 0)
        worker.submit { gate.wait(); log.append(0) }  // holds the thread
        usleep(50_000)
        for i in 1...4 { worker.submit { log.append(i) } }  // 1 drops out: at most 3 wait
        gate.signal()
        log.waitFor(count: 4)
        #expect(log.values == [0, 2, 3, 4])
        let hold = DispatchSemaphore(value: 0)
        worker.submit { hold.wait(); log.append(5) }
        usleep(50_000)
        worker.submit { log.append(6) }
        usleep(300_000)  // 6 is now older than maxAge
        worker.submit { log.append(7) }  // a new listing pushes the stale one out
        hold.signal()
        log.waitFor(count: 6)
        #expect(log.values == [0, 2, 3, 4, 5, 7])
        worker.stop()
        worker.submit { log.append(8) }
        usleep(100_000)
        #expect(log.values == [0, 2, 3, 4, 5, 7])
    }
}
