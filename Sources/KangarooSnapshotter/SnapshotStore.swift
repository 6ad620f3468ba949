import Foundation
import KangarooSystem
import SystemPackage
import Logging

/// Mounts and unmounts a Kangaroo image's lazy tree (the real one runs
/// `kangaroo image mount`; unit tests use a directory).
public protocol ImageMounter: Sendable {
    /// Mounts `reference` at `mountPoint` (an existing empty directory) and
    /// returns once the tree is served.
    func mount(reference: String, image: String, at mountPoint: String) async throws
    /// Whether a live mount serves `mountPoint`.
    func isMounted(_ mountPoint: String) -> Bool
    func unmount(_ mountPoint: String) async throws
}

/// The snapshots of one snapshotter root, as containerd's overlayfs
/// snapshotter keeps them (snapshots/overlay/overlay.go): every snapshot has
/// a directory `snapshots/ID` with `fs` (its layer, the upper dir while
/// active) and `work`; an active snapshot mounts as overlay over its
/// parents' `fs` (a bind mount without parents), a view read-only.
///
/// The metadata is one JSON file replaced atomically after every change
/// (directories are made before and removed after it is written, so a crash
/// leaves at most an unreferenced directory, which the next start removes).
/// Kangaroo image layers are committed without data; the bootstrap layer's
/// lower directory is the image's lazy mount, one per image, made when the
/// first active or view snapshot above it is prepared and unmounted with the
/// last.
public actor SnapshotStore {
    public let root: String
    let logger: Logger
    let mounter: any ImageMounter
    private var snapshots: [String: Snapshot]
    private var nextID: UInt64
    /// Prepares not yet answered (a repeat of one of them is a duplicate).
    private var preparing: Set<String> = []
    /// Group commit of the metadata: changes made, changes on disk, the
    /// write under way.
    private var generation = 0
    private var savedGeneration = 0
    private var writing: (task: Task<SnapshotterError?, Never>, covers: Int, id: Int)?
    private var writes = 0
    /// Mounts made (or tried) per image, to tell a check that raced one.
    private var mountsMade: [String: Int] = [:]
    /// Image mounts in progress, so concurrent Prepares share one.
    private var mounting: [String: Task<Void, any Error>] = [:]
    private let overlayIndexOff: Bool
    /// flock'ed for the store's life: one snapshotter per root.
    private let lockFD: Int32

    private struct Metadata: Codable {
        var version = 1
        var nextID: UInt64
        var snapshots: [Snapshot]
    }

    /// When an image's lazy mount is made and kept.
    public enum MountPolicy: String, Sendable, CaseIterable {
        /// When its bootstrap layer is recorded (the pull), kept while the
        /// image's layers are: the first container does not wait for it.
        case atPull = "pull"
        /// At the first container, gone with the last.
        case atFirstUse = "first-use"
    }
    let mountPolicy: MountPolicy

    public init(root: String, mounter: any ImageMounter, mountPolicy: MountPolicy = .atPull, logger: Logger) throws(SnapshotterError) {
        self.root = root
        self.mounter = mounter
        self.mountPolicy = mountPolicy
        self.logger = logger
        overlayIndexOff = (try? FileSystem.readString("/sys/module/overlay/parameters/index"))?.hasPrefix("Y") ?? false
        do {
            try FileSystem.makeDirectories(root + "/snapshots", mode: 0o700)
            try FileSystem.makeDirectories(root + "/images", mode: 0o711)
        } catch {
            throw SnapshotterError(.internalError, "snapshotter: cannot create \(root)", underlying: error)
        }
        let lock = open(root + "/lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0 else { throw SnapshotterError(.internalError, "snapshotter: cannot open \(root)/lock", underlying: Errno(rawValue: errno)) }
        guard flock(lock, LOCK_EX | LOCK_NB) == 0 else {
            close(lock)
            throw SnapshotterError(.unavailable, "snapshotter: another snapshotter already uses \(root) (its lock file is held)")
        }
        lockFD = lock
        let path = root + "/metadata.json"
        var nextID: UInt64 = 1
        var loaded: [String: Snapshot] = [:]
        if FileSystem.exists(path) {
            do {
                let data = try Data(contentsOf: URL(fileURLWithPath: path))
                let decoder = JSONDecoder()
                decoder.dateDecodingStrategy = .secondsSince1970
                let meta = try decoder.decode(Metadata.self, from: data)
                for s in meta.snapshots { loaded[s.name] = s }
                nextID = meta.nextID
            } catch {
                throw SnapshotterError(.internalError, "snapshotter: cannot read \(path)", underlying: error)
            }
        }
        snapshots = loaded
        self.nextID = nextID
        Self.removeUnreferencedDirectories(root: root, ids: Set(loaded.values.map(\.id)), logger: logger)
    }

    deinit { close(lockFD) }

    nonisolated var metadataPath: String { root + "/metadata.json" }
    nonisolated func directory(_ id: UInt64) -> String { root + "/snapshots/\(id)" }
    nonisolated func imageMountPoint(_ image: String) -> String {
        root + "/images/" + image.replacingOccurrences(of: "sha256:", with: "") + "/mnt"
    }

    // MARK: - containerd's Snapshotter interface

    /// Prepare (or View with `readonly`). For a Kangaroo layer being
    /// unpacked, records the layer and throws alreadyExists, which tells
    /// containerd's unpacker that nothing needs to be downloaded.
    public func prepare(key: String, parent: String, labels: [String: String], readonly: Bool) async throws -> [MountSpec] {
        try Self.validate(key: key)
        if let role = labels[SnapshotLabels.kangarooLayer] {
            try await createRemoteLayer(key: key, parent: parent, labels: labels, role: role)
        }
        if let existing = snapshots[key] {
            // The same request again (same parent, kind and labels):
            // under bursts of CRI CreateContainer containerd 1.6 sends the
            // same backend key twice, about 10 ms after the first was
            // answered (the gap is logged), which its metadata store never
            // issues for two different snapshots (its keys carry a fresh
            // sequence number): it is the one request delivered again, and
            // AlreadyExists would fail the container. It gets the
            // snapshot's mounts. containerd's snapshotter test suite wants
            // AlreadyExists here (PrepareView: the one check of the suite
            // this snapshotter fails, on purpose). Anything else is a
            // conflict.
            if existing.kind == (readonly ? .view : .active),
               existing.parent == (parent.isEmpty ? nil : parent), existing.labels == labels {
                logger.notice("repeated Prepare answered with the existing snapshot",
                              metadata: ["key": "\(key)", "answering": "\(preparing.contains(key))",
                                         "ms-since-created": "\(Int(Date().timeIntervalSince(existing.created) * 1000))"])
                return try await mounts(of: existing)
            }
            throw SnapshotterError(.alreadyExists, "snapshot \(key) already exists")
        }
        let parentName: String? = parent.isEmpty ? nil : parent
        if let parentName {
            guard let p = snapshots[parentName] else { throw SnapshotterError(.notFound, "parent snapshot \(parentName) does not exist") }
            guard p.kind == .committed else {
                throw SnapshotterError(.failedPrecondition, "parent snapshot \(parentName) is \(p.kind.rawValue), not committed")
            }
        }
        let id = nextID
        nextID += 1
        let dir = directory(id)
        do {
            try FileSystem.makeDirectories(dir + "/fs", mode: 0o755)
            if !readonly { try FileSystem.makeDirectories(dir + "/work", mode: 0o700) }
        } catch {
            FileSystem.removeTree(dir)
            throw SnapshotterError(.internalError, "cannot create the directories of snapshot \(key)", underlying: error)
        }
        let now = Date()
        let snapshot = Snapshot(id: id, name: key, parent: parentName, kind: readonly ? .view : .active,
                                created: now, updated: now, labels: labels, remote: nil, usage: nil)
        snapshots[key] = snapshot
        do { try await save() } catch {
            snapshots[key] = nil
            FileSystem.removeTree(dir)
            throw error
        }
        preparing.insert(key)
        defer { preparing.remove(key) }
        do {
            return try await mounts(of: snapshot)
        } catch {
            // The lazy mount failed: nothing of the snapshot stays.
            snapshots[key] = nil
            try? await save()
            FileSystem.removeTree(dir)
            throw error
        }
    }

    public func mounts(key: String) async throws -> [MountSpec] {
        guard let s = snapshots[key] else { throw SnapshotterError(.notFound, "snapshot \(key) does not exist") }
        guard s.kind != .committed else {
            throw SnapshotterError(.failedPrecondition, "snapshot \(key) is committed: only active and view snapshots have mounts")
        }
        return try await mounts(of: s)
    }

    public func commit(name: String, key: String, labels: [String: String]) async throws(SnapshotterError) {
        try Self.validate(key: name)
        guard var s = snapshots[key] else { throw SnapshotterError(.notFound, "snapshot \(key) does not exist") }
        guard s.kind == .active else {
            throw SnapshotterError(.failedPrecondition, "snapshot \(key) is \(s.kind.rawValue): only an active snapshot can be committed")
        }
        guard snapshots[name] == nil else { throw SnapshotterError(.alreadyExists, "snapshot \(name) already exists") }
        let usage = Self.diskUsage(directory(s.id) + "/fs")
        s.name = name
        s.kind = .committed
        s.usage = usage
        // A new snapshot, as containerd's storage makes it on commit.
        s.created = Date()
        s.updated = s.created
        for (k, v) in labels { s.labels[k] = v }
        snapshots[key] = nil
        snapshots[name] = s
        do { try await save() } catch {
            snapshots[name] = nil
            snapshots[key] = Snapshot(id: s.id, name: key, parent: s.parent, kind: .active, created: s.created,
                                      updated: s.created, labels: s.labels, remote: nil, usage: nil)
            throw error
        }
        // The work directory is of no use to a committed layer.
        FileSystem.removeTree(directory(s.id) + "/work")
    }

    public func remove(key: String) async throws {
        guard let s = snapshots[key] else { throw SnapshotterError(.notFound, "snapshot \(key) does not exist") }
        if let child = snapshots.values.first(where: { $0.parent == key }) {
            throw SnapshotterError(.failedPrecondition, "cannot remove snapshot \(key): snapshot \(child.name) is its child")
        }
        snapshots[key] = nil
        do { try await save() } catch {
            snapshots[key] = s
            throw error
        }
        FileSystem.removeTree(directory(s.id))
        if s.kind != .committed, let image = image(under: s) {
            await unmountIfUnused(image)
        } else if let remote = s.remote, remote.role == .bootstrap {
            await unmountIfUnused(remote.image)  // the image itself is gone
        }
    }

    public func stat(key: String) throws(SnapshotterError) -> Snapshot {
        guard let s = snapshots[key] else { throw SnapshotterError(.notFound, "snapshot \(key) does not exist") }
        return s
    }

    /// Update: only labels can change. `paths` as containerd's field mask:
    /// empty (replace all labels), `labels` (the same) or `labels.KEY`.
    public func update(name: String, labels: [String: String], paths: [String]) async throws(SnapshotterError) -> Snapshot {
        guard var s = snapshots[name] else { throw SnapshotterError(.notFound, "snapshot \(name) does not exist") }
        let old = s
        if paths.isEmpty {
            s.labels = labels
        }
        for path in paths {
            if path == "labels" {
                s.labels = labels
            } else if path.hasPrefix("labels.") {
                let k = String(path.dropFirst("labels.".count))
                s.labels[k] = labels[k]
            } else {
                throw SnapshotterError(.invalidArgument, "cannot update field \(path) of snapshot \(name): only labels can change")
            }
        }
        s.updated = Date()
        snapshots[name] = s
        do { try await save() } catch {
            snapshots[name] = old
            throw error
        }
        return s
    }

    public func list(filter: SnapshotFilter) -> [Snapshot] {
        snapshots.values.filter(filter.matches).sorted { $0.id < $1.id }
    }

    public func usage(key: String) throws(SnapshotterError) -> SnapshotUsage {
        guard let s = snapshots[key] else { throw SnapshotterError(.notFound, "snapshot \(key) does not exist") }
        if s.kind == .committed { return s.usage ?? SnapshotUsage(size: 0, inodes: 0) }
        return Self.diskUsage(directory(s.id) + "/fs")
    }

    /// Removes directories no snapshot references and image mounts no
    /// active or view snapshot uses.
    public func cleanup() async {
        Self.removeUnreferencedDirectories(root: root, ids: Set(snapshots.values.map(\.id)), logger: logger)
        for image in (try? FileSystem.list(root + "/images")) ?? [] {
            await unmountIfUnused("sha256:" + image)
        }
    }

    /// Image mounts in use, for `kangaroo node status`.
    public func imageMounts() -> [(image: String, mountPoint: String, users: Int)] {
        var users: [String: Int] = [:]
        for s in snapshots.values where s.kind != .committed {
            if let image = image(under: s) { users[image, default: 0] += 1 }
        }
        return users.keys.sorted().map { ($0, imageMountPoint($0), users[$0]!) }
    }

    // MARK: - Kangaroo layers

    private func createRemoteLayer(key: String, parent: String, labels: [String: String], role: String) async throws(SnapshotterError) {
        guard let role = RemoteLayer.Role(rawValue: role) else {
            throw SnapshotterError(.invalidArgument, "label \(SnapshotLabels.kangarooLayer)=\(role) is not bootstrap or blob")
        }
        guard let target = labels[SnapshotLabels.target], !target.isEmpty else {
            throw SnapshotterError(.invalidArgument, "Kangaroo \(role.rawValue) layer \(key) without a \(SnapshotLabels.target) label")
        }
        let parentName: String? = parent.isEmpty ? nil : parent
        // Already there (another namespace, another pull): nothing to do.
        if snapshots.values.contains(where: { $0.kind == .committed && $0.labels[SnapshotLabels.target] == target && $0.parent == parentName }) {
            throw SnapshotterError(.alreadyExists, "target snapshot \(target) already exists")
        }
        let remote: RemoteLayer
        switch role {
        case .bootstrap:
            guard parentName == nil else {
                throw SnapshotterError(.invalidArgument, "Kangaroo bootstrap layer \(target) has parent \(parent): it must be the image's first layer")
            }
            guard let reference = SnapshotLabels.reference(labels) else {
                throw SnapshotterError(.failedPrecondition, """
                    Kangaroo image layer \(target) came without its image reference: pull it through CRI (with \
                    disable_snapshot_annotations = false) or with `ctr-remote image rpull --snapshotter kangaroo`
                    """)
            }
            remote = RemoteLayer(role: .bootstrap, image: target, reference: reference)
        case .blob:
            guard let parentName, let p = snapshots[parentName], p.kind == .committed, let parentRemote = p.remote else {
                throw SnapshotterError(.failedPrecondition, "Kangaroo blob layer \(target) needs its image's bootstrap layer below it (parent '\(parent)')")
            }
            remote = RemoteLayer(role: .blob, image: parentRemote.image,
                                 reference: SnapshotLabels.reference(labels) ?? parentRemote.reference)
        }
        let id = nextID
        nextID += 1
        do { try FileSystem.makeDirectories(directory(id) + "/fs", mode: 0o755) } catch {
            throw SnapshotterError(.internalError, "cannot create the directory of snapshot \(key)", underlying: error)
        }
        var keep = labels
        keep[SnapshotLabels.kangarooImage] = remote.image
        let now = Date()
        let name = "kangaroo/" + target
        snapshots[name] = Snapshot(id: id, name: name, parent: parentName, kind: .committed, created: now, updated: now,
                                   labels: keep, remote: remote, usage: SnapshotUsage(size: 0, inodes: 0))
        do { try await save() } catch {
            snapshots[name] = nil
            FileSystem.removeTree(directory(id))
            throw error
        }
        logger.info("Kangaroo layer recorded, nothing to download",
                    metadata: ["image": "\(remote.image)", "layer": "\(role.rawValue)", "target": "\(target)", "reference": "\(remote.reference)"])
        if role == .bootstrap && mountPolicy == .atPull {
            // Mounted while containerd finishes the pull; a first container
            // waits for this mount instead of making its own.
            Task { await self.mountAtPull(remote) }
        }
        throw SnapshotterError(.alreadyExists, "target snapshot \(target) already exists (Kangaroo layer, served lazily)")
    }

    /// The Kangaroo image a snapshot's chain rests on, if any.
    private func image(under s: Snapshot) -> String? {
        var cursor: Snapshot? = s
        while let c = cursor {
            if let remote = c.remote { return remote.image }
            cursor = c.parent.flatMap { snapshots[$0] }
        }
        return nil
    }

    private func mounts(of s: Snapshot) async throws -> [MountSpec] {
        // Lower directories, nearest first.
        var lowers: [String] = []
        var cursor = s.parent.flatMap { snapshots[$0] }
        while let c = cursor {
            if let remote = c.remote {
                if remote.role == .bootstrap {
                    let mountPoint = imageMountPoint(remote.image)
                    try await ensureMounted(remote, at: mountPoint)
                    lowers.append(mountPoint)
                }
            } else {
                lowers.append(directory(c.id) + "/fs")
            }
            cursor = c.parent.flatMap { snapshots[$0] }
        }
        let fs = directory(s.id) + "/fs"
        if lowers.isEmpty {
            return [MountSpec(type: "bind", source: fs, options: [s.kind == .view ? "ro" : "rw", "rbind"])]
        }
        var options: [String] = overlayIndexOff ? ["index=off"] : []
        if s.kind == .active {
            options += ["workdir=" + directory(s.id) + "/work", "upperdir=" + fs]
        } else if lowers.count == 1 {
            return [MountSpec(type: "bind", source: lowers[0], options: ["ro", "rbind"])]
        }
        options.append("lowerdir=" + lowers.joined(separator: ":"))
        return [MountSpec(type: "overlay", source: "overlay", options: options)]
    }

    private func ensureMounted(_ remote: RemoteLayer, at mountPoint: String) async throws {
        let mounter = self.mounter
        while true {
            if let pending = mounting[remote.image] {
                try await pending.value
                return
            }
            // The check may ask the FUSE server (stat): off this actor, which
            // must not wait on a busy server. A mount that came and went
            // meanwhile means: look again.
            let generation = mountsMade[remote.image, default: 0]
            if await Task.detached(operation: { mounter.isMounted(mountPoint) }).value { return }
            if mounting[remote.image] == nil && mountsMade[remote.image, default: 0] == generation { break }
        }
        let task = Task {
            try FileSystem.makeDirectories(mountPoint, mode: 0o755)
            try await mounter.mount(reference: remote.reference, image: remote.image, at: mountPoint)
        }
        mounting[remote.image] = task
        defer {
            mounting[remote.image] = nil
            mountsMade[remote.image, default: 0] += 1
        }
        do {
            try await task.value
        } catch {
            throw SnapshotterError(.unavailable, "cannot mount Kangaroo image \(remote.reference) lazily", underlying: error)
        }
        logger.info("image mounted", metadata: ["image": "\(remote.image)", "mountpoint": "\(mountPoint)"])
    }

    private func mountAtPull(_ remote: RemoteLayer) async {
        do { try await ensureMounted(remote, at: imageMountPoint(remote.image)) } catch {
            logger.warning("cannot mount the image at pull; its first container will try again",
                           metadata: ["image": "\(remote.image)", "error": "\(error)"])
        }
    }

    private func unmountIfUnused(_ image: String) async {
        func inUse() -> Bool {
            snapshots.values.contains {
                ($0.kind != .committed && self.image(under: $0) == image)
                    || (mountPolicy == .atPull && $0.remote?.role == .bootstrap && $0.remote?.image == image)
            }
        }
        guard !inUse() else { return }
        // A mount under way (made at the pull, say) finishes first.
        if let pending = mounting[image] {
            _ = try? await pending.value
            guard !inUse() else { return }
        }
        let mountPoint = imageMountPoint(image)
        guard FileSystem.exists(mountPoint) else { return }
        do {
            if mounter.isMounted(mountPoint) {
                try await mounter.unmount(mountPoint)
            } else {
                Mounts.detachAll(under: [mountPoint])  // a dead server's mount
            }
            // Nothing of the image stays but its chunks in the shared cache
            // (rmdir, never a recursive delete: it fails on a mount point).
            let dir = (mountPoint as NSString).deletingLastPathComponent
            if rmdir(mountPoint) == 0 {
                unlink(dir + "/mount.log")
                rmdir(dir)
            }
            logger.info("image unmounted: its last snapshot was removed", metadata: ["image": "\(image)"])
        } catch {
            logger.warning("cannot unmount image", metadata: ["image": "\(image)", "error": "\(error)"])
        }
    }

    // MARK: - Storage

    /// Writes the metadata durably before the change is answered, as group
    /// commit: a change made while a write is under way waits for the next
    /// write, which covers every change made meanwhile (a burst's hundreds
    /// of Prepare and Remove calls cost a few writes, not one fsync each).
    /// The write runs off the actor, so other calls go on meanwhile.
    private func save() async throws(SnapshotterError) {
        generation += 1
        let mine = generation
        while savedGeneration < mine {
            // Whoever resumes first after a write does its bookkeeping (the
            // write's own caller may come later).
            if let w = writing {
                let failed = await w.task.value
                if writing?.id == w.id { writing = nil }
                if let failed {
                    if w.covers >= mine { throw failed }
                } else {
                    savedGeneration = max(savedGeneration, w.covers)
                }
                continue
            }
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .secondsSince1970
            encoder.outputFormatting = [.sortedKeys]
            let text: String
            do {
                text = String(decoding: try encoder.encode(Metadata(nextID: nextID, snapshots: snapshots.values.sorted { $0.id < $1.id })),
                              as: UTF8.self)
            } catch {
                throw SnapshotterError(.internalError, "cannot encode \(metadataPath)", underlying: error)
            }
            let path = metadataPath
            writing = (Task.detached { () -> SnapshotterError? in
                do { try FileSystem.replaceDurably(path, text) } catch {
                    return SnapshotterError(.internalError, "cannot write \(path)", underlying: error)
                }
                return nil
            }, generation, writes)
            writes += 1
        }
    }

    private static func removeUnreferencedDirectories(root: String, ids: Set<UInt64>, logger: Logger) {
        for name in (try? FileSystem.list(root + "/snapshots")) ?? [] where !ids.contains(UInt64(name) ?? 0) {
            logger.notice("removing a snapshot directory no snapshot references", metadata: ["directory": "\(name)"])
            FileSystem.removeTree(root + "/snapshots/" + name)
        }
    }

    static func validate(key: String) throws(SnapshotterError) {
        guard !key.isEmpty else { throw SnapshotterError(.invalidArgument, "snapshot key is empty") }
        guard key.utf8.count <= 4096 else { throw SnapshotterError(.invalidArgument, "snapshot key is longer than 4096 bytes") }
    }

    /// Allocated bytes and unique inodes below `path` (as containerd's
    /// continuity fs.DiskUsage).
    static func diskUsage(_ path: String) -> SnapshotUsage {
        var seen = Set<UInt64>()
        var size: Int64 = 0
        func walk(_ p: String) {
            var st = Glibc.stat()
            guard lstat(p, &st) == 0 else { return }
            if seen.insert(UInt64(st.st_ino)).inserted { size += Int64(st.st_blocks) * 512 }
            if (st.st_mode & S_IFMT) == S_IFDIR {
                for n in (try? FileSystem.list(p)) ?? [] { walk(p + "/" + n) }
            }
        }
        walk(path)
        return SnapshotUsage(size: size, inodes: Int64(seen.count))
    }
}
