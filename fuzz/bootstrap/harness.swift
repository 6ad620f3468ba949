// libFuzzer harness: arbitrary bytes -> Bootstrap parser -> full tree walk,
// xattrs, readdir, readlink, chunk maps and ToC lookups. Any trap or
// sanitizer report is a bug; thrown ImageErrors are expected.

func exerciseBootstrap(_ bytes: [UInt8]) {
    guard let b = try? Bootstrap(bytes: bytes) else { return }
    var visited = 0
    try? b.walk { (_, inode) throws(ImageError) in
        visited += 1
        _ = try? b.xattrs(inode)
        switch inode.kind {
        case .directory:
            if let entries = try? b.readdir(inode) {
                for e in entries.prefix(4) { _ = try? b.lookup(in: inode, name: e.name) }
                _ = try? b.lookup(in: inode, name: "zz")
            }
        case .symlink:
            _ = try? b.readlink(inode)
        case .regular:
            if let map = try? b.chunkMap(inode) {
                for case let location? in map { _ = b.extensionRegion.chunkIndex(at: location) }
            }
        default:
            _ = inode.device
        }
    }
    _ = try? b.lookup(path: "a/b/c")
    for nid in [b.rootNid &+ 1, 0, UInt64(bytes.count / 32), UInt64.max] { _ = try? b.inode(nid) }
    _ = b.prefetch.count + b.chunks.count + b.blobs.count + visited
}

@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    exerciseBootstrap(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
