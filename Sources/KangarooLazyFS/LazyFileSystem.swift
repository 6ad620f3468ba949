import KangarooFUSE
import KangarooImage
import Logging
import Synchronization
import SystemPackage

/// Serves a Kangaroo image's bootstrap over FUSE; file data comes from the
/// chunk cache, fetched and verified on first read. Behaves like the kernel
/// EROFS mount of the same image: st_ino is the EROFS nid, hardlinks share
/// it, directories list "." and "..", modes, owners, times, device numbers,
/// symlink targets and xattrs come straight from the bootstrap.
public final class LazyFileSystem: FUSEFileSystem {
    public let bootstrap: Bootstrap
    public let fetcher: ChunkFetcher
    let logger: Logger
    let trace: AccessTrace?
    /// Decoded directories and chunk maps (ToC indexes, nil = hole), by nid.
    private let directories = Mutex<[UInt64: [DirectoryEntry]]>([:])
    private let chunkMaps = Mutex<[UInt64: [Int?]]>([:])

    /// Page-cache prefill of small files after a directory listing.
    public struct Prefill: Sendable {
        /// Largest file pushed (bytes).
        public var maxFileSize: Int
        /// Page cache filled per directory listing at most (bytes, whole
        /// 4 KiB pages); 0 turns prefill off.
        public var budget: Int
        /// Entries of one directory looked at, at most.
        public static let entryLimit = 4096
        public init(maxFileSize: Int = 64 << 10, budget: Int = 2 << 20) {
            self.maxFileSize = maxFileSize
            self.budget = budget
        }
        public static let off = Prefill(maxFileSize: 0, budget: 0)
    }

    let prefill: Prefill
    private let prefillWorker: PrefillWorker

    public init(fetcher: ChunkFetcher, trace: AccessTrace? = nil, prefill: Prefill = Prefill(), logger: Logger) {
        self.bootstrap = fetcher.bootstrap
        self.fetcher = fetcher
        self.prefill = prefill
        self.trace = trace
        self.prefillWorker = PrefillWorker()
        self.logger = logger
    }

    // MARK: nodeid <-> nid (the root is nodeid 1; others are nid + 2)

    func nid(_ nodeID: UInt64) -> UInt64 { nodeID == FUSEProtocol.rootID ? bootstrap.rootNid : nodeID &- 2 }
    func nodeID(_ nid: UInt64) -> UInt64 { nid == bootstrap.rootNid ? FUSEProtocol.rootID : nid + 2 }

    func inode(_ nodeID: UInt64) throws(FUSEError) -> ImageInode {
        do { return try bootstrap.inode(nid(nodeID)) } catch {
            logger.error("lazyfs: inode \(nid(nodeID)): \(error)")
            throw FUSEError.io
        }
    }

    func attributes(_ inode: ImageInode) -> FUSEAttributes {
        let time = FUSETime(seconds: UInt64(bitPattern: inode.mtimeSeconds), nanoseconds: inode.mtimeNanoseconds)
        let isDevice = inode.kind == .characterDevice || inode.kind == .blockDevice
        return FUSEAttributes(inode: inode.nid, mode: inode.mode, size: inode.size,
                              blocks: (inode.size + 4095) / 4096 * 8, linkCount: inode.nlink,
                              uid: inode.uid, gid: inode.gid, rdev: isDevice ? inode.iu : 0,
                              accessTime: time, modificationTime: time, changeTime: time, blockSize: 4096)
    }

    func entry(_ inode: ImageInode) -> FUSEEntry {
        FUSEEntry(nodeID: nodeID(inode.nid), attributes: attributes(inode))
    }

    func entries(_ dir: ImageInode) throws(FUSEError) -> [DirectoryEntry] {
        if let cached = directories.withLock({ $0[dir.nid] }) { return cached }
        guard dir.kind == .directory else { throw FUSEError.notDirectory }
        let list: [DirectoryEntry]
        do { list = try bootstrap.readdir(dir) } catch {
            logger.error("lazyfs: directory \(dir.nid): \(error)")
            throw FUSEError.io
        }
        directories.withLock { $0[dir.nid] = list }
        return list
    }

    /// ToC chunk index per file chunk (nil for holes).
    func chunkIndexes(_ inode: ImageInode) throws(FUSEError) -> [Int?] {
        if let cached = chunkMaps.withLock({ $0[inode.nid] }) { return cached }
        var out: [Int?] = []
        do {
            for location in try bootstrap.chunkMap(inode) {
                guard let location else { out.append(nil); continue }
                guard let index = bootstrap.extensionRegion.chunkIndex(at: location) else {
                    throw ImageError(.corruptBootstrap, "file \(inode.nid) points at blob \(location.blob) block \(location.blockAddress), not in the ToC")
                }
                out.append(index)
            }
        } catch {
            logger.error("lazyfs: chunk map of inode \(inode.nid): \(error)")
            throw FUSEError.io
        }
        chunkMaps.withLock { $0[inode.nid] = out }
        return out
    }

    // MARK: FUSEFileSystem

    public func lookup(parent: UInt64, name: [UInt8]) throws(FUSEError) -> FUSEEntry {
        let dir = try inode(parent)
        let list = try entries(dir)
        var lo = 0, hi = list.count
        while lo < hi {
            let mid = (lo + hi) / 2
            let candidate = list[mid].nameBytes
            if candidate == name {
                let child = try inode(nodeID(list[mid].nid))
                trace?.noteLookup(parent: dir.nid, name: name, child: child.nid)
                return entry(child)
            }
            if candidate.lexicographicallyPrecedes(name) { lo = mid + 1 } else { hi = mid }
        }
        throw FUSEError.noEntry
    }

    public func getattr(nodeID: UInt64) throws(FUSEError) -> FUSEAttributes { attributes(try inode(nodeID)) }

    public func readlink(nodeID: UInt64) throws(FUSEError) -> [UInt8] {
        let node = try inode(nodeID)
        guard node.kind == .symlink else { throw FUSEError.invalid }
        do { return Array(try bootstrap.readlink(node).utf8) } catch {
            logger.error("lazyfs: readlink \(node.nid): \(error)")
            throw FUSEError.io
        }
    }

    public func open(nodeID: UInt64, flags: UInt32) throws(FUSEError) -> FUSEOpenReply {
        let node = try inode(nodeID)
        if node.kind == .directory { throw FUSEError.isDirectory }
        // Without a trace there is nothing to do on open: ENOSYS switches the
        // kernel to zero-message opens (no OPEN/RELEASE round trips per file).
        guard let trace else { throw FUSEError.notSupported }
        trace.noteOpen(node.nid)
        return .immutableFile
    }

    /// Zero-message opendir: the kernel caches readdir results without it.
    public func opendir(nodeID: UInt64) throws(FUSEError) -> FUSEOpenReply { throw FUSEError.notSupported }

    public func read(nodeID: UInt64, handle: UInt64, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FUSEError) -> Int {
        let node = try inode(nodeID)
        guard node.kind == .regular else { throw FUSEError.invalid }
        guard offset < node.size, buffer.count > 0 else { return 0 }
        let end = min(node.size, offset + UInt64(buffer.count))
        let chunkSize = UInt64(bootstrap.chunkSize)
        let map = try chunkIndexes(node)
        let first = Int(offset / chunkSize), last = Int((end - 1) / chunkSize)
        guard last < map.count else { throw FUSEError.io }
        let needed = map[first...last].compactMap { $0 }
        do { try fetcher.ensure(needed) } catch {
            logger.error("lazyfs: read of inode \(node.nid) at \(offset) (+\(buffer.count)) failed: \(error)")
            throw FUSEError.io
        }
        return try copyCached(node, map: map, offset: offset, end: end, into: buffer)
    }

    /// Copies bytes [offset, end) of `node` from the chunk cache (every chunk
    /// they touch must be cached; holes read as zeros).
    func copyCached(_ node: ImageInode, map: [Int?], offset: UInt64, end: UInt64,
                    into buffer: UnsafeMutableRawBufferPointer) throws(FUSEError) -> Int {
        let chunkSize = UInt64(bootstrap.chunkSize)
        var position = offset
        var written = 0
        while position < end {
            let c = Int(position / chunkSize)
            let within = Int(position - UInt64(c) * chunkSize)
            let take = Int(min(end, UInt64(c + 1) * chunkSize) - position)
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer[written..<(written + take)])
            if let index = map[c] {
                let n: Int
                do { n = try fetcher.cache.read(index, offset: within, into: target) } catch {
                    logger.error("lazyfs: reading cached chunk \(index): \(error)")
                    throw FUSEError.io
                }
                if n < take { _ = target.baseAddress!.advanced(by: n).initializeMemory(as: UInt8.self, repeating: 0, count: take - n) }
            } else {
                _ = target.initializeMemory(as: UInt8.self, repeating: 0)
            }
            written += take
            position += UInt64(take)
        }
        return written
    }

    public func readdir(nodeID: UInt64, handle: UInt64, offset: UInt64, into writer: inout FUSEDirectoryWriter) throws(FUSEError) {
        let dir = try inode(nodeID)
        let list = try entries(dir)
        guard offset < UInt64(list.count) else { return }
        for i in Int(offset)..<list.count {
            let e = list[i]
            let type = Self.fileType(e.fileType)
            var plus: FUSEEntry?
            let isDot = e.name == "." || e.name == ".."
            if writer.isPlus && !isDot {
                plus = entry(try inode(self.nodeID(e.nid)))
                // READDIRPLUS entries are lookups the kernel will not repeat.
                trace?.noteLookup(parent: dir.nid, name: e.nameBytes, child: e.nid)
            }
            if !writer.append(name: e.nameBytes, inode: e.nid, type: type, nextOffset: UInt64(i + 1), entry: plus) { return }
        }
    }

    /// After a listing, pushes the contents of the directory's small
    /// regular files into the kernel's page cache, as kernel EROFS keeps a
    /// small file's data inline in its inode block: reading the directory's
    /// inodes brings their data along. Only files of at most
    /// `prefill.maxFileSize` bytes whose chunks are all cached (a listing
    /// never fetches), at most `prefill.budget` bytes of page cache per
    /// listing.
    public func directoryListed(nodeID: UInt64, cache: FUSEPageCache) {
        guard prefill.budget > 0, trace == nil else { return }
        prefillWorker.submit { [self] in prefillDirectory(nodeID, cache: cache) }
    }

    /// Ends the prefill thread (the mount is going away).
    public func stopPrefill() { prefillWorker.stop() }

    func prefillDirectory(_ nodeID: UInt64, cache: FUSEPageCache) {
        guard let dir = try? inode(nodeID), let list = try? entries(dir) else { return }
        var budget = prefill.budget
        var pushed = Set<UInt64>()
        withUnsafeTemporaryAllocation(byteCount: prefill.maxFileSize, alignment: 4096) { buffer in
            for e in list.prefix(Prefill.entryLimit) where Self.fileType(e.fileType) == .regular && budget > 0 {
                guard let node = try? bootstrap.inode(e.nid), node.kind == .regular,
                      node.size > 0, node.size <= UInt64(prefill.maxFileSize), Self.pages(node.size) <= budget,
                      pushed.insert(e.nid).inserted,
                      let map = try? chunkIndexes(node), map.allSatisfy({ $0.map(fetcher.cache.isCached) ?? true })
                else { continue }
                let target = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(node.size)])
                guard let count = try? copyCached(node, map: map, offset: 0, end: node.size, into: target) else { continue }
                // Refused: the kernel no longer holds the entries (evicted
                // since the listing), so the rest would be refused too.
                guard cache.store(nodeID: self.nodeID(e.nid), offset: 0, bytes: UnsafeRawBufferPointer(rebasing: target[0..<count]))
                else { return }
                budget -= Self.pages(UInt64(count))
            }
        }
    }

    /// Page cache taken by `size` bytes.
    static func pages(_ size: UInt64) -> Int { Int((size + 4095) / 4096 * 4096) }

    static func fileType(_ erofsType: UInt8) -> FUSEFileType {
        switch erofsType {
        case 2: .directory
        case 3: .characterDevice
        case 4: .blockDevice
        case 5: .fifo
        case 6: .socket
        case 7: .symlink
        default: .regular
        }
    }

    public func statfs(nodeID: UInt64) throws(FUSEError) -> FUSEStatfs {
        FUSEStatfs(blocks: UInt64(bootstrap.blockCount) + bootstrap.blobs.reduce(0) { $0 + $1.uncompressedBlocks },
                   files: bootstrap.inodeCount, blockSize: 4096, nameMax: 255)
    }

    public func getxattr(nodeID: UInt64, name: [UInt8]) throws(FUSEError) -> [UInt8] {
        let wanted = String(decoding: name, as: UTF8.self)
        for x in try xattrs(nodeID) where x.name == wanted { return x.value }
        throw FUSEError.noAttribute
    }

    public func listxattr(nodeID: UInt64) throws(FUSEError) -> [[UInt8]] {
        try xattrs(nodeID).map { Array($0.name.utf8) }
    }

    func xattrs(_ nodeID: UInt64) throws(FUSEError) -> [(name: String, value: [UInt8])] {
        let node = try inode(nodeID)
        do { return try bootstrap.xattrs(node) } catch {
            logger.error("lazyfs: xattrs of inode \(node.nid): \(error)")
            throw FUSEError.io
        }
    }
}
