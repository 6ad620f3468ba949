import Foundation
import KangarooNode
import KangarooSystem
import KangarooTestSupport
import Testing
@testable import KangarooShim

/// The disk pool's group commit: acquires that arrive together on one pool
/// object (the node daemon's) are booked in shared passes under the lock,
/// and each still gets a disk of its own (real loop devices).
@Suite(.serialized, .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct DiskPoolBookingTests {
    @Test("32 acquires at once on one pool: each owner its own region and device, the pool's 4 disks used first, a repeat answers the same disk")
    func concurrentAcquiresBookDistinctDisks() throws {
        let tmp = try TempDir("diskpool")
        let config = DiskConfig(nodeFile: tmp.sub("node.img"), nodeSize: 1 << 30, defaultSize: 16 << 20, poolSize: 4, stateDir: tmp.sub("state"))
        let pool = try DiskPool(config: config)
        defer { try? pool.remove() }
        #expect(try pool.fill() == 4)
        let n = 32
        let results = Mutexed([Int: Result<Disk, DiskError>]())
        let group = DispatchGroup()
        for i in 0..<n {
            group.enter()
            // Threads of their own: Dispatch would run about two at once.
            Thread.detachNewThread {
                let r = Result { () throws(DiskError) -> Disk in try pool.acquire(owner: "owner-\(i)") }
                results.with { $0[i] = r }
                group.leave()
            }
        }
        #expect(group.wait(timeout: .now() + 120) == .success)
        let disks = results.with { $0 }.compactMapValues { try? $0.get() }
        #expect(disks.count == n, "\(results.with { $0 }.values.compactMap { if case .failure(let e) = $0 { return "\(e)" } else { return nil } })")
        #expect(Set(disks.values.map(\.offset)).count == n)
        #expect(Set(disks.values.compactMap(\.loop)).count == n)
        #expect(disks.values.filter { $0.pooled == true }.count == 4)
        let status = try pool.status()
        let attached = status.disks.filter { $0.state == .attached }
        #expect(attached.count == n)
        for (i, d) in disks { #expect(attached.first { $0.offset == d.offset }?.owner == "owner-\(i)") }
        let again = try pool.acquire(owner: "owner-7")
        #expect(again.offset == disks[7]?.offset)
        for i in 0..<n { #expect(try pool.release(owner: "owner-\(i)")) }
        #expect(try pool.status().disks.filter { $0.state == .attached }.isEmpty)
    }
}

/// A value shared between threads under a lock.
final class Mutexed<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ value: T) { self.value = value }
    func with<R>(_ body: (inout T) -> R) -> R {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }
}

@Suite(.serialized, .enabled(if: TestEnv.enabled, "needs root and KANGAROO_INTEGRATION=1"))
struct SandboxDiskTests {
    /// A container's Create after its sandbox's Delete (the sandbox died
    /// meanwhile) must not take a disk: nothing would release it.
    @Test("a container of a sandbox without a disk mounted gets none from the pool, and a clear error")
    func containerOfAGoneSandboxTakesNoDisk() throws {
        let tmp = try TempDir("sandboxdisk")
        let config = DiskConfig(nodeFile: tmp.sub("node.img"), nodeSize: 256 << 20, defaultSize: 16 << 20, poolSize: 1, stateDir: tmp.sub("state"))
        let pool = try DiskPool(config: config)
        defer { try? pool.remove() }
        let disks = SandboxDisks(pool: config, stateRoot: tmp.sub("node"))
        let bundle = tmp.sub("bundle")
        try FileManager.default.createDirectory(atPath: bundle, withIntermediateDirectories: true)
        try #"{"annotations":{"io.kubernetes.cri.sandbox-id":"gone-sandbox","io.kubernetes.cri.container-type":"container"}}"#
            .write(toFile: bundle + "/config.json", atomically: true, encoding: .utf8)
        let result = Result { () throws(ShimError) in try disks.rootfs([], namespace: "k8s.io", id: "c1", bundle: bundle) }
        var message = "a container of a sandbox without a disk got one"
        var code: ShimError.Code?
        if case .failure(let e) = result { message = e.message; code = e.code }
        #expect(code == .failedPrecondition && message.contains("gone-sandbox"), "\(message)")
        #expect(try pool.status().disks.filter { $0.state == .attached }.isEmpty)
    }
}
