/// A directory entry read from a bootstrap.
public struct DirectoryEntry: Sendable, Equatable {
    public var name: String
    public var nameBytes: [UInt8]
    public var nid: UInt64
    public var fileType: UInt8
}

extension Bootstrap {
    /// The entries of a directory, in on-disk (byte-sorted) order, including "." and "..".
    public func readdir(_ inode: ImageInode) throws(ImageError) -> [DirectoryEntry] {
        guard inode.kind == .directory else { throw ImageError(.invalidArgument, "inode \(inode.nid) is not a directory") }
        let data = try flatData(inode)
        var entries: [DirectoryEntry] = []
        var blockStart = 0
        while blockStart < data.count {
            let block = try direntBlock(data, at: blockStart, nid: inode.nid)
            if let prev = entries.last, let first = block.first, !byteLess(prev.nameBytes, first.nameBytes) {
                throw ImageError.corrupt("directory \(inode.nid) entries are not strictly sorted")
            }
            entries.append(contentsOf: block)
            blockStart += EROFS.blockSize
        }
        return entries
    }

    /// Finds one entry by name with a binary search over the directory's
    /// blocks (as the kernel does), parsing only the blocks it visits.
    public func lookup(in dir: ImageInode, name: String) throws(ImageError) -> DirectoryEntry? {
        guard dir.kind == .directory else { throw ImageError(.invalidArgument, "inode \(dir.nid) is not a directory") }
        let data = try flatData(dir)
        let key = Array(name.utf8)
        let blocks = (data.count + EROFS.blockSize - 1) / EROFS.blockSize
        var lo = 0, hi = blocks
        while lo < hi {
            let mid = (lo + hi) / 2
            let entries = try direntBlock(data, at: mid * EROFS.blockSize, nid: dir.nid)
            guard let first = entries.first, let last = entries.last else { return nil }
            if byteLess(key, first.nameBytes) {
                hi = mid
            } else if byteLess(last.nameBytes, key) {
                lo = mid + 1
            } else {
                return entries.first { $0.nameBytes == key }
            }
        }
        return nil
    }

    /// Parses and validates one directory block.
    private func direntBlock(_ data: [UInt8], at blockStart: Int, nid dirNid: UInt64) throws(ImageError) -> [DirectoryEntry] {
        let bs = EROFS.blockSize
        let blockLen = min(bs, data.count - blockStart)
        let block = ByteView(Array(data[blockStart..<(blockStart + blockLen)]))
        let first = Int(try block.u16(8))
        guard first >= EROFS.direntSize, first < blockLen, first % EROFS.direntSize == 0 else {
            throw ImageError.corrupt("directory \(dirNid) block \(blockStart / bs) has bad first name offset \(first)")
        }
        let n = first / EROFS.direntSize
        var entries: [DirectoryEntry] = []
        entries.reserveCapacity(n)
        for i in 0..<n {
            let o = i * EROFS.direntSize
            let nid = try block.u64(o), nameOff = Int(try block.u16(o + 8)), type = try block.u8(o + 10)
            let nameEnd = i + 1 < n ? Int(try block.u16(o + EROFS.direntSize + 8)) : blockLen
            guard nameOff >= first, nameOff < nameEnd, nameEnd <= blockLen else {
                throw ImageError.corrupt("directory \(dirNid) entry \(i) has bad name offsets \(nameOff)..<\(nameEnd)")
            }
            var name = Array(try block.slice(nameOff, nameEnd - nameOff))
            if i + 1 == n, let nul = name.firstIndex(of: 0) { name = Array(name[..<nul]) }
            guard !name.isEmpty, name.count <= EROFS.nameMax, !name.contains(0), !name.contains(UInt8(ascii: "/")) else {
                throw ImageError.corrupt("directory \(dirNid) has an invalid entry name")
            }
            if let prev = entries.last, !byteLess(prev.nameBytes, name) {
                throw ImageError.corrupt("directory \(dirNid) entries are not strictly sorted")
            }
            entries.append(DirectoryEntry(name: String(decoding: name, as: UTF8.self), nameBytes: name, nid: nid, fileType: type))
        }
        return entries
    }

    /// The children of a directory, without "." and "..".
    public func children(_ inode: ImageInode) throws(ImageError) -> [DirectoryEntry] {
        try readdir(inode).filter { $0.name != "." && $0.name != ".." }
    }

    /// Looks up a relative or absolute path without following symlinks.
    public func lookup(path: String) throws(ImageError) -> ImageInode {
        var current = try inode(rootNid)
        for component in path.split(separator: "/", omittingEmptySubsequences: true) where component != "." {
            guard current.kind == .directory else { throw ImageError(.notFound, "'\(path)': '\(component)' is below a non-directory") }
            guard let found = try lookup(in: current, name: String(component)) else {
                throw ImageError(.notFound, "'\(path)' does not exist in the image")
            }
            current = try inode(found.nid)
        }
        return current
    }

    /// Visits every path in depth-first pre-order (children byte-sorted), the
    /// root as "". Rejects directory cycles and hard-linked directories.
    public func walk(_ visit: (String, ImageInode) throws(ImageError) -> Void) throws(ImageError) {
        var seenDirs: Set<UInt64> = []
        let root = try inode(rootNid)
        seenDirs.insert(root.nid)
        try visit("", root)
        var stack: [(path: String, inode: ImageInode, depth: Int)] = [("", root, 0)]
        while let item = stack.popLast() {
            let (path, dir, depth) = item
            guard depth < 4096 else { throw ImageError.corrupt("directory tree deeper than 4096 levels") }
            var subdirs: [(String, ImageInode, Int)] = []
            for entry in try children(dir) {
                let child = try inode(entry.nid)
                let childPath = path.isEmpty ? entry.name : path + "/" + entry.name
                if child.kind == .directory {
                    guard seenDirs.insert(child.nid).inserted else {
                        throw ImageError.corrupt("directory inode \(child.nid) is reachable twice (cycle or hard-linked directory)")
                    }
                }
                try visit(childPath, child)
                if child.kind == .directory { subdirs.append((childPath, child, depth + 1)) }
            }
            // Depth-first pre-order: push in reverse so the first child is processed next.
            // (Entries of a directory are visited before descending; see docs/FORMAT.md.)
            stack.append(contentsOf: subdirs.reversed())
        }
    }
}
