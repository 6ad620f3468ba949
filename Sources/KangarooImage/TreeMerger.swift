import KangarooOCI

/// Merges layer entries into one flattened tree, applying OCI whiteouts
/// (image-spec "Image Layer Filesystem Changeset"): `.wh.NAME` deletes NAME
/// of lower layers, `.wh..wh..opq` hides all lower-layer children of its
/// directory (same-layer ones stay). Paths are never resolved through
/// symlinks or non-directories: such entries are rejected.
final class TreeMerger {
    let root: TreeNode
    private(set) var layer = 0
    private var layerName = ""

    init() {
        root = TreeNode(kind: .directory, mode: 0o755)
        root.touchedLayer = -1
    }

    func beginLayer(_ index: Int, name: String) {
        layer = index
        layerName = name
    }

    private func hostile(_ path: String, _ why: String) -> ImageError {
        ImageError(.hostileEntry, "layer \(layer) (\(layerName)) entry '\(path)': \(why)")
    }

    private func components(_ path: String) throws(ImageError) -> [String] {
        var parts: [String] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            guard part != "..", part.utf8.count <= EROFS.nameMax, !part.utf8.contains(0) else {
                throw hostile(path, "invalid path component '\(part)'")
            }
            parts.append(String(part))
        }
        return parts
    }

    /// Resolves a directory, creating missing ones (mode 0755, root-owned, mtime 0).
    private func directory(_ parts: ArraySlice<String>, entryPath: String, create: Bool) throws(ImageError) -> TreeNode? {
        var node = root
        var walked: [String] = []
        for part in parts {
            walked.append(part)
            if let child = node.children[part] {
                guard child.isDirectory else {
                    let what = if case .symlink = child.kind { "a symlink" } else { "not a directory" }
                    throw hostile(entryPath, "parent '\(walked.joined(separator: "/"))' is \(what) in the merged tree (never followed)")
                }
                if create { child.touchedLayer = layer }
                node = child
            } else {
                guard create else { return nil }
                let dir = TreeNode(kind: .directory, mode: 0o755)
                dir.touchedLayer = layer
                node.children[part] = dir
                node = dir
            }
        }
        return node
    }

    /// Looks up an existing node without following symlinks.
    func lookup(_ path: String) throws(ImageError) -> TreeNode? {
        let parts = try components(path)
        guard let last = parts.last else { return root }
        guard let parent = try? directory(parts.dropLast(), entryPath: path, create: false) else { return nil }
        return parent.children[last]
    }

    /// Applies one entry. For a new regular file, `content` fills in its data.
    func apply(_ entry: LayerEntry, content: (TreeNode) throws(ImageError) -> Void) throws(ImageError) {
        let parts = try components(entry.path)
        guard let name = parts.last else {
            // The root directory itself.
            guard entry.kind == .directory else { throw hostile(entry.path, "the root must be a directory") }
            setMetadata(root, entry)
            return
        }
        if name.hasPrefix(".wh.") {
            if name == ".wh..wh..opq" {
                // The opaque directory and its ancestors belong to this layer.
                guard let parent = try directory(parts.dropLast(), entryPath: entry.path, create: true) else { return }
                prune(parent)
                return
            }
            // Whiteouts never create directories: a missing parent means nothing to hide.
            guard let parent = try directory(parts.dropLast(), entryPath: entry.path, create: false) else { return }
            if name.hasPrefix(".wh..wh.") { return }   // other aufs metadata
            let victim = String(name.dropFirst(4))
            guard !victim.isEmpty, victim != ".", victim != ".." else { throw hostile(entry.path, "invalid whiteout") }
            if let existing = parent.children[victim], existing.touchedLayer != layer {
                parent.children[victim] = nil
            }
            return
        }
        guard let parent = try directory(parts.dropLast(), entryPath: entry.path, create: true) else { return }
        switch entry.kind {
        case .directory:
            if let existing = parent.children[name], existing.isDirectory {
                setMetadata(existing, entry)
                existing.touchedLayer = layer
            } else {
                let node = TreeNode(kind: .directory, mode: entry.mode)
                setMetadata(node, entry)
                node.touchedLayer = layer
                parent.children[name] = node
            }
        case .hardlink(let target):
            let targetParts = try components(target)
            guard !targetParts.isEmpty else { throw hostile(entry.path, "hard link to the root directory") }
            let targetParent: TreeNode?
            do { targetParent = try directory(targetParts.dropLast(), entryPath: target, create: false) } catch {
                throw hostile(entry.path, "hard link target '\(target)' lies below a non-directory")
            }
            guard let targetNode = targetParent?.children[targetParts[targetParts.count - 1]] else {
                throw hostile(entry.path, "hard link target '\(target)' does not exist in this or a lower layer")
            }
            guard !targetNode.isDirectory else { throw hostile(entry.path, "hard link target '\(target)' is a directory") }
            targetNode.touchedLayer = layer
            parent.children[name] = targetNode
        default:
            let kind: TreeNode.Kind
            switch entry.kind {
            case .regular: kind = .regular
            case .symlink(let target): kind = .symlink(target: target)
            case .characterDevice(let major, let minor): kind = .characterDevice(major: major, minor: minor)
            case .blockDevice(let major, let minor): kind = .blockDevice(major: major, minor: minor)
            case .fifo: kind = .fifo
            case .socket: kind = .socket
            case .directory, .hardlink: return
            }
            if case .symlink(let target) = kind, target.isEmpty || target.utf8.count >= EROFS.blockSize || target.utf8.contains(0) {
                throw hostile(entry.path, "symlink target must be 1...4095 bytes without NUL")
            }
            let node = TreeNode(kind: kind, mode: entry.mode)
            setMetadata(node, entry)
            node.touchedLayer = layer
            if kind == .regular {
                node.size = entry.size
                try content(node)
            }
            parent.children[name] = node
        }
    }

    private func setMetadata(_ node: TreeNode, _ entry: LayerEntry) {
        node.mode = entry.mode & 0o7777
        node.uid = entry.uid
        node.gid = entry.gid
        node.mtimeSeconds = entry.mtimeSeconds
        node.mtimeNanoseconds = entry.mtimeNanoseconds
        node.xattrs = entry.xattrs
    }

    /// Opaque directory: drop everything not touched by the current layer.
    private func prune(_ dir: TreeNode) {
        for (name, child) in dir.children {
            if child.touchedLayer != layer {
                dir.children[name] = nil
            } else if child.isDirectory {
                prune(child)
            }
        }
    }
}
