/// Where one chunk of a regular file lives: 0-based blob index (EROFS
/// device_id - 1) and the block address in that blob's uncompressed space.
public struct ChunkLocation: Hashable, Sendable, Comparable {
    public var blob: Int
    public var blockAddress: UInt32

    public init(blob: Int, blockAddress: UInt32) {
        self.blob = blob
        self.blockAddress = blockAddress
    }

    public static func < (a: ChunkLocation, b: ChunkLocation) -> Bool {
        (a.blob, a.blockAddress) < (b.blob, b.blockAddress)
    }
}

/// A node of a merged, flattened filesystem tree, as written into a
/// bootstrap. Hard links are the same `TreeNode` object reachable under
/// several names.
public final class TreeNode {
    public enum Kind: Equatable, Sendable {
        case directory
        case regular
        case symlink(target: String)
        case characterDevice(major: UInt32, minor: UInt32)
        case blockDevice(major: UInt32, minor: UInt32)
        case fifo
        case socket
    }

    public var kind: Kind
    /// Permission bits including setuid/setgid/sticky (07777).
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var mtimeSeconds: Int64
    public var mtimeNanoseconds: UInt32
    public var xattrs: [String: [UInt8]]
    /// Logical size of a regular file.
    public var size: UInt64
    /// One entry per chunk of a regular file; nil = hole (all zeros).
    public var chunks: [ChunkLocation?]
    /// Children of a directory by name.
    public var children: [String: TreeNode]

    /// Builder bookkeeping: pending chunk ids (-1 = hole) and the last layer touching the node.
    var pendingChunks: [Int] = []
    var touchedLayer: Int = -1

    public init(kind: Kind, mode: UInt32, uid: UInt32 = 0, gid: UInt32 = 0,
                mtimeSeconds: Int64 = 0, mtimeNanoseconds: UInt32 = 0,
                xattrs: [String: [UInt8]] = [:], size: UInt64 = 0, chunks: [ChunkLocation?] = []) {
        self.kind = kind
        self.mode = mode & 0o7777
        self.uid = uid
        self.gid = gid
        self.mtimeSeconds = mtimeSeconds
        self.mtimeNanoseconds = mtimeNanoseconds
        self.xattrs = xattrs
        self.size = size
        self.chunks = chunks
        self.children = [:]
    }

    public var isDirectory: Bool { kind == .directory }

    /// Full st_mode (type bits | permission bits).
    public var fullMode: UInt32 {
        let type: UInt32
        switch kind {
        case .directory: type = EROFS.sIFDIR
        case .regular: type = EROFS.sIFREG
        case .symlink: type = EROFS.sIFLNK
        case .characterDevice: type = EROFS.sIFCHR
        case .blockDevice: type = EROFS.sIFBLK
        case .fifo: type = EROFS.sIFIFO
        case .socket: type = EROFS.sIFSOCK
        }
        return type | (mode & 0o7777)
    }

    var fileType: UInt8 {
        switch kind {
        case .directory: EROFS.ftDirectory
        case .regular: EROFS.ftRegular
        case .symlink: EROFS.ftSymlink
        case .characterDevice: EROFS.ftCharDevice
        case .blockDevice: EROFS.ftBlockDevice
        case .fifo: EROFS.ftFifo
        case .socket: EROFS.ftSocket
        }
    }

    /// Children sorted byte-wise by name (the order of everything in the image).
    public var sortedChildren: [(name: String, node: TreeNode)] {
        children.map { (name: $0.key, node: $0.value) }.sorted { byteLess(Array($0.name.utf8), Array($1.name.utf8)) }
    }

    /// Visits every (path, node) in depth-first pre-order with sorted
    /// children; the root has path "". Hard-linked nodes are visited once per name.
    public func walk(_ visit: (String, TreeNode) throws -> Void) rethrows {
        try visit("", self)
        try walkChildren(prefix: "", visit)
    }

    private func walkChildren(prefix: String, _ visit: (String, TreeNode) throws -> Void) rethrows {
        for (name, child) in sortedChildren {
            let path = prefix.isEmpty ? name : prefix + "/" + name
            try visit(path, child)
            if child.isDirectory { try child.walkChildren(prefix: path, visit) }
        }
    }
}
