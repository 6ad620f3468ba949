import KangarooFUSE
import Synchronization

/// Deterministic content generator: byte `i` of a generated file.
enum Pattern {
    static func word(_ index: UInt64) -> UInt64 {
        var z = index &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    static func bytes(count: Int) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        result.withUnsafeMutableBytes { raw in
            let words = count / 8
            let pointer = raw.bindMemory(to: UInt64.self)
            for index in 0..<words { pointer[index] = word(UInt64(index)) }
            for index in (words * 8)..<count { raw[index] = UInt8(truncatingIfNeeded: word(UInt64(index / 8)) >> ((index % 8) * 8)) }
        }
        return result
    }
}

/// An immutable in-memory tree served over FUSE in the tests.
final class MemoryFileSystem: FUSEFileSystem {
    enum Kind {
        case directory(names: [[UInt8]], children: [[UInt8]: UInt64], parent: UInt64)
        case file([UInt8])
        case symlink([UInt8])
        /// A file whose reads block until `gate` opens (slow network fetch).
        case slow([UInt8])
    }

    struct Node {
        var attributes: FUSEAttributes
        var kind: Kind
        var xattrs: [[UInt8]: [UInt8]] = [:]
    }

    let nodes: [UInt64: Node]
    /// Paths (relative, "/"-separated) to nodeids, for the tests' model.
    let paths: [String: UInt64]
    let forgets = Atomic<Int>(0)
    let gate = Gate()

    static let mtime = FUSETime(seconds: 1_700_000_000, nanoseconds: 123_456_789)

    /// Push the files of a listed directory into the page cache.
    let pushOnListing: Bool
    /// Pushes the kernel took (store returned true).
    let pushed = Atomic<Int>(0)

    init(nodes: [UInt64: Node], paths: [String: UInt64], pushOnListing: Bool = false) {
        self.nodes = nodes
        self.paths = paths
        self.pushOnListing = pushOnListing
    }

    func directoryListed(nodeID: UInt64, cache: FUSEPageCache) {
        guard pushOnListing, case .directory(_, let children, _)? = nodes[nodeID]?.kind else { return }
        for id in children.values {
            guard case .file(let content)? = nodes[id]?.kind, !content.isEmpty else { continue }
            if content.withUnsafeBytes({ cache.store(nodeID: id, offset: 0, bytes: $0) }) {
                pushed.add(1, ordering: .relaxed)
            }
        }
    }

    // MARK: FUSEFileSystem

    func lookup(parent: UInt64, name: [UInt8]) throws(FUSEError) -> FUSEEntry {
        guard case .directory(_, let children, _)? = nodes[parent]?.kind else { throw .notDirectory }
        guard let id = children[name], let node = nodes[id] else { throw .noEntry }
        return FUSEEntry(nodeID: id, attributes: node.attributes)
    }

    func forget(nodeID: UInt64, lookups: UInt64) { forgets.add(1, ordering: .relaxed) }

    func getattr(nodeID: UInt64) throws(FUSEError) -> FUSEAttributes {
        guard let node = nodes[nodeID] else { throw .noEntry }
        return node.attributes
    }

    func readlink(nodeID: UInt64) throws(FUSEError) -> [UInt8] {
        guard case .symlink(let target)? = nodes[nodeID]?.kind else { throw .invalid }
        return target
    }

    func read(nodeID: UInt64, handle: UInt64, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FUSEError) -> Int {
        let content: [UInt8]
        switch nodes[nodeID]?.kind {
        case .file(let bytes)?: content = bytes
        case .slow(let bytes)?:
            gate.waitOpen()
            content = bytes
        case .directory?: throw .isDirectory
        default: throw .invalid
        }
        guard offset < UInt64(content.count) else { return 0 }
        let count = min(buffer.count, content.count - Int(offset))
        content.withUnsafeBytes { source in
            buffer.baseAddress?.copyMemory(from: source.baseAddress! + Int(offset), byteCount: count)
        }
        return count
    }

    func readdir(nodeID: UInt64, handle: UInt64, offset: UInt64, into writer: inout FUSEDirectoryWriter) throws(FUSEError) {
        guard let node = nodes[nodeID] else { throw .noEntry }
        guard case .directory(let names, let children, let parent) = node.kind else { throw .notDirectory }
        var index = Int(offset)
        let all: [([UInt8], UInt64)] = [(Array(".".utf8), nodeID), (Array("..".utf8), parent)] + names.map { ($0, children[$0]!) }
        while index < all.count {
            let (name, id) = all[index]
            guard let child = nodes[id], let type = child.attributes.type else { throw .io }
            let entry = index < 2 ? nil : FUSEEntry(nodeID: id, attributes: child.attributes)
            if !writer.append(name: name, inode: child.attributes.inode, type: type, nextOffset: UInt64(index + 1), entry: entry) {
                break
            }
            index += 1
        }
    }

    func statfs(nodeID: UInt64) throws(FUSEError) -> FUSEStatfs {
        FUSEStatfs(blocks: 1000, blocksFree: 0, blocksAvailable: 0, files: UInt64(nodes.count), filesFree: 0,
                   blockSize: 4096, nameMax: 255, fragmentSize: 4096)
    }

    func getxattr(nodeID: UInt64, name: [UInt8]) throws(FUSEError) -> [UInt8] {
        guard let node = nodes[nodeID] else { throw .noEntry }
        guard let value = node.xattrs[name] else { throw .noAttribute }
        return value
    }

    func listxattr(nodeID: UInt64) throws(FUSEError) -> [[UInt8]] {
        guard let node = nodes[nodeID] else { throw .noEntry }
        return node.xattrs.keys.sorted { $0.lexicographicallyPrecedes($1) }
    }
}

/// A gate blocked reads wait on (with a safety timeout).
final class Gate: Sendable {
    private let open = Mutex(false)
    let waiting = Atomic<Int>(0)

    func release() { open.withLock { $0 = true } }

    func waitOpen() {
        waiting.add(1, ordering: .relaxed)
        for _ in 0..<2000 {  // at most ~20 s
            if open.withLock({ $0 }) { return }
            var delay = timespec(tv_sec: 0, tv_nsec: 10_000_000)
            nanosleep(&delay, nil)
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// Builds the test tree.
struct MemoryTreeBuilder {
    private(set) var nodes: [UInt64: MemoryFileSystem.Node] = [:]
    private(set) var paths: [String: UInt64] = [:]
    private var nextID: UInt64 = 2

    init() {
        nodes[FUSEProtocol.rootID] = MemoryFileSystem.Node(
            attributes: FUSEAttributes(inode: 1, mode: 0o040755, linkCount: 2, modificationTime: MemoryFileSystem.mtime),
            kind: .directory(names: [], children: [:], parent: 1))
        paths[""] = 1
    }

    private mutating func add(_ path: String, mode: UInt32, kind: MemoryFileSystem.Kind, size: Int = 0, uid: UInt32 = 0, gid: UInt32 = 0) -> UInt64 {
        let id = nextID
        nextID += 1
        let components = path.split(separator: "/")
        let parentPath = components.dropLast().joined(separator: "/")
        let parent = paths[parentPath]!
        nodes[id] = MemoryFileSystem.Node(
            attributes: FUSEAttributes(inode: id, mode: mode, size: UInt64(size), linkCount: 1, uid: uid, gid: gid,
                                       accessTime: MemoryFileSystem.mtime, modificationTime: MemoryFileSystem.mtime,
                                       changeTime: MemoryFileSystem.mtime),
            kind: kind)
        link(path, to: id, parent: parent)
        return id
    }

    private mutating func link(_ path: String, to id: UInt64, parent: UInt64) {
        let name = Array(path.split(separator: "/").last!.utf8)
        guard case .directory(var names, var children, let grandparent) = nodes[parent]!.kind else { fatalError("parent") }
        names.append(name)
        children[name] = id
        nodes[parent]!.kind = .directory(names: names, children: children, parent: grandparent)
        paths[path] = id
    }

    mutating func directory(_ path: String, mode: UInt32 = 0o755) {
        let parentPath = path.split(separator: "/").dropLast().joined(separator: "/")
        let id = add(path, mode: 0o040000 | mode, kind: .directory(names: [], children: [:], parent: paths[parentPath]!))
        nodes[id]!.attributes.linkCount = 2
        nodes[id]!.attributes.size = 4096
        nodes[id]!.attributes.blocks = 8
    }

    @discardableResult
    mutating func file(_ path: String, _ content: [UInt8], mode: UInt32 = 0o644, uid: UInt32 = 0, gid: UInt32 = 0) -> UInt64 {
        add(path, mode: 0o100000 | mode, kind: .file(content), size: content.count, uid: uid, gid: gid)
    }

    mutating func slowFile(_ path: String, _ content: [UInt8]) {
        _ = add(path, mode: 0o100444, kind: .slow(content), size: content.count)
    }

    mutating func symlink(_ path: String, target: String) {
        _ = add(path, mode: 0o120777, kind: .symlink(Array(target.utf8)), size: target.utf8.count)
    }

    /// A second name for the inode at `existing`.
    mutating func hardlink(_ path: String, to existing: String) {
        let id = paths[existing]!
        let parentPath = path.split(separator: "/").dropLast().joined(separator: "/")
        link(path, to: id, parent: paths[parentPath]!)
        nodes[id]!.attributes.linkCount += 1
    }

    mutating func xattr(_ path: String, _ name: String, _ value: [UInt8]) {
        nodes[paths[path]!]!.xattrs[Array(name.utf8)] = value
    }

    func build(pushOnListing: Bool = false) -> MemoryFileSystem {
        MemoryFileSystem(nodes: nodes, paths: paths, pushOnListing: pushOnListing)
    }

    /// The standard test tree: 40 dirs x 100 files, symlinks, hardlinks,
    /// xattrs, a long name, a big generated file and a slow file.
    static func standard(bigFileSize: Int = 64 << 20, pushOnListing: Bool = false) -> MemoryFileSystem {
        var tree = MemoryTreeBuilder()
        for d in 0..<40 {
            let dir = "d" + pad(d, 3)
            tree.directory(dir)
            for f in 0..<100 {
                let text = "file \(dir)/f\(pad(f, 3))\n"
                let content = Array(String(repeating: text, count: (d * 100 + f) % 37 + 1).utf8)
                tree.file("\(dir)/f\(pad(f, 3))", content, mode: f % 10 == 0 ? 0o755 : 0o644, uid: UInt32(f % 3 * 1000), gid: UInt32(f % 2 * 100))
            }
        }
        tree.directory("links")
        for s in 0..<100 {
            tree.symlink("links/s\(pad(s, 3))", target: "../d\(pad(s % 40, 3))/f\(pad(s, 3))")
        }
        tree.symlink("links/dangling", target: "/nonexistent/target")
        tree.hardlink("links/hard", to: "d000/f000")
        tree.hardlink("d001/hard-to-d000-f001", to: "d000/f001")
        tree.xattr("d000/f001", "user.kangaroo", Array("hello".utf8))
        tree.xattr("d000/f001", "user.empty", [])
        tree.xattr("d000/f001", "user.binary", [0, 1, 2, 255])
        tree.xattr("d000", "user.dir", Array("directory attr".utf8))
        tree.directory("deep")
        tree.directory("deep/a")
        tree.directory("deep/a/b")
        tree.file("deep/a/b/" + String(repeating: "n", count: 255), Array("long name\n".utf8))
        tree.file("empty", [])
        tree.file("big", Pattern.bytes(count: bigFileSize), mode: 0o444)
        tree.slowFile("slow", Array("slow content\n".utf8))
        return tree.build(pushOnListing: pushOnListing)
    }

    static func pad(_ value: Int, _ width: Int) -> String {
        let text = String(value)
        return String(repeating: "0", count: max(0, width - text.count)) + text
    }
}
