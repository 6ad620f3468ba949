import CArchive

// File-type bits of archive_entry_filetype (archive_entry.h AE_IF*; the C
// macros are casts and do not import into Swift).
private let typeMask: UInt32 = 0o170000
private let typeRegular: UInt32 = 0o100000
private let typeSymlink: UInt32 = 0o120000
private let typeSocket: UInt32 = 0o140000
private let typeCharacter: UInt32 = 0o020000
private let typeBlock: UInt32 = 0o060000
private let typeDirectory: UInt32 = 0o040000
private let typeFifo: UInt32 = 0o010000

extension LayerReader {
    /// Decodes a C string from libarchive; rejects bytes that are not UTF-8.
    static func string(_ pointer: UnsafePointer<CChar>?, what: String, entry: String?) throws(OCIError) -> String? {
        guard let pointer else { return nil }
        let bytes = UnsafeRawBufferPointer(start: pointer, count: strlenBounded(pointer))
        guard let s = String(validating: bytes, as: UTF8.self) else {
            let name = entry.map { " of entry '\($0)'" } ?? ""
            let lossy = String(decoding: bytes, as: UTF8.self)
            throw OCIError(.invalidLayer, "\(what)\(name) '\(lossy)' is not valid UTF-8")
        }
        return s
    }

    static func makeEntry(_ e: OpaquePointer) throws(OCIError) -> LayerEntry {
        let rawPath = try string(archive_entry_pathname_utf8(e) ?? archive_entry_pathname(e),
                                 what: "path", entry: nil)
        guard let rawPath else {
            throw OCIError(.invalidLayer, "malformed layer: an entry has no path")
        }
        let path = try LayerEntry.cleanPath(rawPath) ?? ""

        let kind: LayerEntry.Kind
        var size: UInt64 = 0
        if let rawTarget = try string(archive_entry_hardlink_utf8(e) ?? archive_entry_hardlink(e),
                                      what: "hard link target", entry: rawPath) {
            guard let target = try LayerEntry.cleanPath(rawTarget) else {
                throw OCIError(.invalidLayer, "layer entry '\(rawPath)' is a hard link to the image root")
            }
            if path.isEmpty {
                throw OCIError(.invalidLayer, "layer entry '\(rawPath)' replaces the image root with a hard link")
            }
            kind = .hardlink(target: target)
        } else {
            let type = UInt32(archive_entry_filetype(e)) & typeMask
            switch type {
            case typeRegular, 0:
                kind = .regular
                let raw = archive_entry_size(e)
                guard raw >= 0 else {
                    throw OCIError(.invalidLayer, "layer entry '\(rawPath)' has a negative size \(raw)")
                }
                size = UInt64(raw)
            case typeDirectory:
                kind = .directory
            case typeSymlink:
                let target = try string(archive_entry_symlink_utf8(e) ?? archive_entry_symlink(e),
                                        what: "symlink target", entry: rawPath) ?? ""
                kind = .symlink(target: target)
            case typeCharacter:
                kind = .characterDevice(major: UInt32(truncatingIfNeeded: archive_entry_rdevmajor(e)),
                                        minor: UInt32(truncatingIfNeeded: archive_entry_rdevminor(e)))
            case typeBlock:
                kind = .blockDevice(major: UInt32(truncatingIfNeeded: archive_entry_rdevmajor(e)),
                                    minor: UInt32(truncatingIfNeeded: archive_entry_rdevminor(e)))
            case typeFifo:
                kind = .fifo
            case typeSocket:
                kind = .socket
            default:
                throw OCIError(.invalidLayer, "layer entry '\(rawPath)' has an unknown file type \(String(type, radix: 8))")
            }
        }
        if path.isEmpty, kind != .directory {
            throw OCIError(.invalidLayer, "layer entry '\(rawPath)' names the image root but is not a directory")
        }

        let uid = archive_entry_uid(e)
        let gid = archive_entry_gid(e)
        guard uid >= 0, uid <= Int64(UInt32.max), gid >= 0, gid <= Int64(UInt32.max) else {
            throw OCIError(.invalidLayer, "layer entry '\(rawPath)' has an out-of-range owner \(uid):\(gid)")
        }
        let nsec = archive_entry_mtime_nsec(e)
        var result = LayerEntry(
            path: path, kind: kind,
            mode: UInt32(archive_entry_perm(e)) & 0o7777,
            uid: UInt32(uid), gid: UInt32(gid),
            mtimeSeconds: Int64(archive_entry_mtime(e)),
            mtimeNanoseconds: (nsec >= 0 && nsec < 1_000_000_000) ? UInt32(nsec) : 0,
            size: size)
        result.xattrs = try xattrs(e, entry: rawPath)
        return result
    }

    /// Extended attributes (PAX `SCHILY.xattr.*` and `LIBARCHIVE.xattr.*`), raw values.
    static func xattrs(_ e: OpaquePointer, entry: String) throws(OCIError) -> [String: [UInt8]] {
        let count = archive_entry_xattr_reset(e)
        guard count > 0 else { return [:] }
        var out: [String: [UInt8]] = [:]
        for _ in 0..<count {
            var name: UnsafePointer<CChar>?
            var value: UnsafeRawPointer?
            var size = 0
            guard archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK else { break }
            guard let n = try string(name, what: "xattr name", entry: entry), !n.isEmpty else {
                throw OCIError(.invalidLayer, "layer entry '\(entry)' has an xattr without a name")
            }
            // An empty PAX record value deletes the keyword (POSIX pax,
            // "extended header keyword"): no xattr, as Go's archive/tar,
            // umoci and containerd read it.
            if let value, size > 0 {
                out[n] = Array(UnsafeRawBufferPointer(start: value, count: size))
            } else {
                out[n] = nil
            }
        }
        return out
    }
}
