import Foundation
import Logging
import Synchronization
import Testing
@testable import KangarooSnapshotter

/// An ImageMounter that records calls; "mounted" is a marker file.
final class RecordingMounter: ImageMounter {
    let calls = Mutex<[String]>([])
    let failing: Bool
    init(failing: Bool = false) { self.failing = failing }

    func mount(reference: String, image: String, at mountPoint: String) async throws {
        calls.withLock { $0.append("mount \(reference) \(mountPoint)") }
        if failing { throw SnapshotterError(.unavailable, "registry unreachable") }
        FileManager.default.createFile(atPath: mountPoint + "/.mounted", contents: nil)
    }
    func isMounted(_ mountPoint: String) -> Bool { FileManager.default.fileExists(atPath: mountPoint + "/.mounted") }
    func unmount(_ mountPoint: String) async throws {
        calls.withLock { $0.append("unmount \(mountPoint)") }
        try FileManager.default.removeItem(atPath: mountPoint + "/.mounted")
    }
}

func temporaryRoot() -> String {
    let path = NSTemporaryDirectory() + "kangaroo-snap-\(UUID().uuidString)"
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func expectCode(_ code: SnapshotterError.Code, _ body: () async throws -> Void) async {
    do {
        try await body()
        Issue.record("expected \(code), got success")
    } catch let e as SnapshotterError {
        #expect(e.code == code, "\(e)")
    } catch {
        Issue.record("expected SnapshotterError \(code), got \(error)")
    }
}

@Suite struct SnapshotStoreTests {
    let logger = Logger(label: "test")

    @Test func overlayChainAsContainerdsOverlaySnapshotter() async throws {
        let root = temporaryRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try SnapshotStore(root: root, mounter: RecordingMounter(), logger: logger)
        let m0 = try await store.prepare(key: "extract-1", parent: "", labels: [:], readonly: false)
        #expect(m0.count == 1 && m0[0].type == "bind" && m0[0].options == ["rw", "rbind"])
        FileManager.default.createFile(atPath: m0[0].source + "/a", contents: Data("layer0".utf8))
        try await store.commit(name: "layer0", key: "extract-1", labels: ["x": "1"])
        await expectCode(.notFound) { _ = try await store.stat(key: "extract-1") }
        #expect(try await store.stat(key: "layer0").kind == .committed)
        #expect(try await store.usage(key: "layer0").inodes == 2)

        let m1 = try await store.prepare(key: "extract-2", parent: "layer0", labels: [:], readonly: false)
        #expect(m1[0].type == "overlay")
        let opts = m1[0].options
        #expect(opts.contains { $0.hasPrefix("upperdir=") } && opts.contains { $0.hasPrefix("workdir=") })
        #expect(opts.last == "lowerdir=" + m0[0].source)
        try await store.commit(name: "layer1", key: "extract-2", labels: [:])

        // A view of one layer is a read-only bind, of two an overlay without upper.
        let v1 = try await store.prepare(key: "view1", parent: "layer0", labels: [:], readonly: true)
        #expect(v1 == [MountSpec(type: "bind", source: m0[0].source, options: ["ro", "rbind"])])
        let v2 = try await store.prepare(key: "view2", parent: "layer1", labels: [:], readonly: true)
        #expect(v2[0].type == "overlay" && !v2[0].options.contains { $0.hasPrefix("upperdir=") })
        #expect(v2[0].options.last?.split(separator: ":").count == 2)
        await expectCode(.failedPrecondition) { try await store.commit(name: "x", key: "view1", labels: [:]) }

        // Errors containerd maps back to errdefs.
        await expectCode(.alreadyExists) { _ = try await store.prepare(key: "view1", parent: "", labels: [:], readonly: false) }
        // The identical request again gets the same mounts (containerd 1.6
        // delivers some Prepares twice).
        #expect(try await store.prepare(key: "view1", parent: "layer0", labels: [:], readonly: true) == v1)
        await expectCode(.notFound) { _ = try await store.prepare(key: "c", parent: "nope", labels: [:], readonly: false) }
        let active = try await store.prepare(key: "active", parent: "layer1", labels: [:], readonly: false)
        #expect(!active.isEmpty)
        await expectCode(.failedPrecondition) { _ = try await store.prepare(key: "c", parent: "active", labels: [:], readonly: false) }
        await expectCode(.failedPrecondition) { try await store.remove(key: "layer1") }
        await expectCode(.alreadyExists) { try await store.commit(name: "layer0", key: "active", labels: [:]) }
        await expectCode(.invalidArgument) { _ = try await store.prepare(key: "", parent: "", labels: [:], readonly: false) }

        for key in ["active", "view2", "view1", "layer1"] { try await store.remove(key: key) }
        let left = await store.list(filter: try SnapshotFilter([])).map(\.name)
        #expect(left == ["layer0"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/snapshots").count == 1)
    }

    @Test func labelsUpdateAndFilters() async throws {
        let root = temporaryRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try SnapshotStore(root: root, mounter: RecordingMounter(), logger: logger)
        _ = try await store.prepare(key: "a", parent: "", labels: ["containerd.io/snapshot.ref": "sha256:1", "k": "v"], readonly: false)
        try await store.commit(name: "base", key: "a", labels: [:])
        _ = try await store.prepare(key: "b", parent: "base", labels: ["k": "w"], readonly: false)

        var s = try await store.update(name: "b", labels: ["k": "z", "other": "1"], paths: ["labels.k"])
        #expect(s.labels == ["k": "z"])
        s = try await store.update(name: "b", labels: ["n": "1"], paths: [])
        #expect(s.labels == ["n": "1"])
        await expectCode(.invalidArgument) { _ = try await store.update(name: "b", labels: [:], paths: ["parent"]) }

        func names(_ filters: [String]) async throws -> [String] { await store.list(filter: try SnapshotFilter(filters)).map(\.name) }
        #expect(try await names([#"labels."containerd.io/snapshot.ref"==sha256:1,parent=="""#]) == ["base"])
        #expect(try await names(["parent==base"]) == ["b"])
        #expect(try await names(["kind==committed", "name==b"]) == ["base", "b"])
        #expect(try await names(["name~=^b"]) == ["base", "b"])
        #expect(try await names(["labels.n"]) == ["b"])
        #expect(try await names(["name!=b"]) == ["base"])
        #expect(throws: SnapshotterError.self) { try SnapshotFilter(["bogus==1"]) }
        #expect(throws: SnapshotterError.self) { try SnapshotFilter(["name=1"]) }
    }

    @Test(arguments: SnapshotStore.MountPolicy.allCases)
    func kangarooLayersAreRecordedNotDownloadedAndShareOneMount(policy: SnapshotStore.MountPolicy) async throws {
        let root = temporaryRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let mounter = RecordingMounter()
        let store = try SnapshotStore(root: root, mounter: mounter, mountPolicy: policy, logger: logger)
        let cri = [SnapshotLabels.criImageRef: "127.0.0.1:5000/sample:kangaroo",
                   SnapshotLabels.criManifestDigest: "sha256:" + String(repeating: "m", count: 64)]
        var boot = cri
        boot[SnapshotLabels.kangarooLayer] = "bootstrap"
        boot[SnapshotLabels.target] = "sha256:b00t"
        // Without a reference (plain `ctr pull`): a clear refusal.
        await expectCode(.failedPrecondition) {
            _ = try await store.prepare(key: "extract-0", parent: "",
                                        labels: [SnapshotLabels.kangarooLayer: "bootstrap", SnapshotLabels.target: "sha256:b00t"], readonly: false)
        }
        await expectCode(.alreadyExists) { _ = try await store.prepare(key: "extract-1", parent: "", labels: boot, readonly: false) }
        let layer0 = await store.list(filter: try SnapshotFilter([#"labels."containerd.io/snapshot.ref"==sha256:b00t"#]))
        #expect(layer0.count == 1 && layer0[0].kind == .committed)
        #expect(layer0[0].remote?.reference == "127.0.0.1:5000/sample@sha256:" + String(repeating: "m", count: 64))
        var blob = cri
        blob[SnapshotLabels.kangarooLayer] = "blob"
        blob[SnapshotLabels.target] = "sha256:chain1"
        await expectCode(.alreadyExists) { _ = try await store.prepare(key: "extract-2", parent: layer0[0].name, labels: blob, readonly: false) }
        // A second pull (another namespace) finds them.
        await expectCode(.alreadyExists) { _ = try await store.prepare(key: "extract-3", parent: "", labels: boot, readonly: false) }
        let top = "kangaroo/sha256:chain1"
        #expect(try await store.stat(key: top).parent == layer0[0].name)
        if policy == .atFirstUse {
            #expect(mounter.calls.withLock { $0 }.isEmpty)
        } else {
            // Mounted in the background at the pull, once.
            for _ in 0..<200 where mounter.calls.withLock({ $0 }).isEmpty { try await Task.sleep(for: .milliseconds(10)) }
            #expect(mounter.calls.withLock { $0 }.count == 1)
        }

        // Two containers: one mount, overlay over it.
        let c1 = try await store.prepare(key: "c1", parent: top, labels: [:], readonly: false)
        let c2 = try await store.prepare(key: "c2", parent: top, labels: [:], readonly: false)
        let mountPoint = await store.imageMountPoint("sha256:b00t")
        #expect(c1[0].type == "overlay" && c1[0].options.last == "lowerdir=" + mountPoint)
        #expect(c2[0].options.last == "lowerdir=" + mountPoint)
        #expect(mounter.calls.withLock { $0 }.count == 1)
        try await store.remove(key: "c1")
        #expect(mounter.isMounted(mountPoint))
        try await store.remove(key: "c2")
        if policy == .atPull {
            // Kept while the image is there; gone with its bootstrap layer.
            #expect(mounter.isMounted(mountPoint))
            try await store.remove(key: top)
            #expect(mounter.isMounted(mountPoint))
            try await store.remove(key: layer0[0].name)
        }
        #expect(!mounter.isMounted(mountPoint))
        #expect(mounter.calls.withLock { $0 }.last == "unmount \(mountPoint)")
    }

    @Test func aFailedLazyMountLeavesNoSnapshot() async throws {
        let root = temporaryRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try SnapshotStore(root: root, mounter: RecordingMounter(failing: true), logger: logger)
        let boot = [SnapshotLabels.kangarooLayer: "bootstrap", SnapshotLabels.target: "sha256:b00t",
                    SnapshotLabels.stargzReference: "127.0.0.1:5000/sample:kangaroo"]
        await expectCode(.alreadyExists) { _ = try await store.prepare(key: "extract-1", parent: "", labels: boot, readonly: false) }
        await expectCode(.unavailable) { _ = try await store.prepare(key: "c1", parent: "kangaroo/sha256:b00t", labels: [:], readonly: false) }
        await expectCode(.notFound) { _ = try await store.stat(key: "c1") }
        #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/snapshots").count == 1)
    }

    @Test func oneSnapshotterPerRoot() async throws {
        let root = temporaryRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let first = try SnapshotStore(root: root, mounter: RecordingMounter(), logger: logger)
        await expectCode(.unavailable) { _ = try SnapshotStore(root: root, mounter: RecordingMounter(), logger: logger) }
        _ = first
    }

    @Test func metadataSurvivesAndOrphanDirectoriesGoAtStart() async throws {
        let root = temporaryRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        do {
            let store = try SnapshotStore(root: root, mounter: RecordingMounter(), logger: logger)
            _ = try await store.prepare(key: "a", parent: "", labels: ["l": "1"], readonly: false)
            try await store.commit(name: "base", key: "a", labels: [:])
        }
        // A crash between making a directory and writing the metadata.
        try FileManager.default.createDirectory(atPath: root + "/snapshots/99/fs", withIntermediateDirectories: true)
        let store = try SnapshotStore(root: root, mounter: RecordingMounter(), logger: logger)
        #expect(try await store.stat(key: "base").labels == ["l": "1"])
        #expect(!FileManager.default.fileExists(atPath: root + "/snapshots/99"))
        // New ids do not reuse the old one.
        _ = try await store.prepare(key: "b", parent: "base", labels: [:], readonly: false)
        #expect(try await store.stat(key: "b").id > (try await store.stat(key: "base").id))
    }
}
