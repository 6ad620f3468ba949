import CArchive
#if canImport(Glibc)
import Glibc
#endif

/// Reads the entries of an OCI layer: a tar archive (ustar, pax, GNU,
/// including GNU and PAX sparse files), gzip- or zstd-compressed or not,
/// through libarchive. Only the tar format and the gzip, zstd and none
/// filters are enabled.
///
/// Single-threaded use: one reader belongs to one task at a time.
public final class LayerReader {
    public enum Compression: Sendable {
        case auto, gzip, zstd, none
    }

    private let archive: OpaquePointer
    /// Owned copy of the input for `init(bytes:)`; freed in `deinit`.
    private var memory: UnsafeMutableRawBufferPointer?
    /// The entry being read (for error messages and data bounds).
    private var current: (path: String, size: UInt64, isRegular: Bool)?
    /// End of the last data block returned for the current entry.
    private var dataEnd: UInt64 = 0
    private var finished = false

    /// Opens the layer archive at `path` (a file path string).
    init(pathString: String, compression: Compression) throws(OCIError) {
        guard let a = archive_read_new() else {
            throw OCIError(.io, "cannot allocate a libarchive reader")
        }
        archive = a
        try Self.configure(a, compression: compression)
        // A zero-byte layer is an empty changeset (libarchive cannot open it).
        var st = stat()
        if stat(pathString, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size == 0 {
            finished = true
            return
        }
        let rc = archive_read_open_filename(a, pathString, 128 * 1024)
        if rc != ARCHIVE_OK {
            let message = Self.errorString(a)
            let errno = archive_errno(a)
            if errno == 2 /* ENOENT */ {
                throw OCIError(.notFound, "layer file '\(pathString)' does not exist")
            }
            throw OCIError(.io, "cannot open layer '\(pathString)': \(message)")
        }
    }

    /// Reads a layer held in memory (tests and fuzzing). The bytes are copied.
    public init(bytes: [UInt8]) throws(OCIError) {
        guard let a = archive_read_new() else {
            throw OCIError(.io, "cannot allocate a libarchive reader")
        }
        archive = a
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
        bytes.withUnsafeBytes { src in
            if let base = src.baseAddress, src.count > 0 {
                buffer.baseAddress?.copyMemory(from: base, byteCount: src.count)
            }
        }
        memory = buffer
        try Self.configure(a, compression: .auto)
        if bytes.isEmpty {
            finished = true
            return
        }
        let rc = archive_read_open_memory(a, buffer.baseAddress, bytes.count)
        if rc != ARCHIVE_OK {
            throw OCIError(.invalidLayer, "cannot open in-memory layer: \(Self.errorString(a))")
        }
    }

    deinit {
        archive_read_free(archive)
        memory?.deallocate()
    }

    private static func configure(_ a: OpaquePointer, compression: Compression) throws(OCIError) {
        var results: [Int32] = []
        switch compression {
        case .auto:
            results.append(archive_read_support_filter_gzip(a))
            results.append(archive_read_support_filter_zstd(a))
            results.append(archive_read_support_filter_none(a))
        case .gzip:
            results.append(archive_read_support_filter_gzip(a))
        case .zstd:
            results.append(archive_read_support_filter_zstd(a))
        case .none:
            results.append(archive_read_support_filter_none(a))
        }
        results.append(archive_read_support_format_tar(a))
        // ARCHIVE_WARN means an external program would be used; still usable.
        if results.contains(where: { $0 < ARCHIVE_WARN }) {
            throw OCIError(.unsupported, "libarchive lacks support for \(compression) layers: \(errorString(a))")
        }
    }

    static func errorString(_ a: OpaquePointer) -> String {
        guard let s = archive_error_string(a) else { return "unknown libarchive error" }
        return String(decoding: UnsafeRawBufferPointer(start: s, count: strlenBounded(s)), as: UTF8.self)
    }

    private func failure(_ what: String) -> OCIError {
        let name = current.map { " at entry '\($0.path)'" } ?? ""
        return OCIError(.invalidLayer, "malformed layer\(name): \(what): \(Self.errorString(archive))")
    }

    /// The next entry, or nil at the end. Unread data of the previous entry is skipped.
    public func next() throws(OCIError) -> LayerEntry? {
        if finished { return nil }
        var entryPointer: OpaquePointer?
        var rc: Int32 = ARCHIVE_RETRY
        var attempts = 0
        while rc == ARCHIVE_RETRY {
            attempts += 1
            if attempts > 64 { throw failure("reading the next header keeps asking for a retry") }
            rc = archive_read_next_header(archive, &entryPointer)
        }
        if rc == ARCHIVE_EOF {
            finished = true
            current = nil
            return nil
        }
        guard rc >= ARCHIVE_WARN, let entry = entryPointer else {
            finished = true
            throw failure("cannot read the next header")
        }
        do {
            let result = try Self.makeEntry(entry)
            current = (result.path, result.size, result.kind == .regular)
            dataEnd = 0
            return result
        } catch {
            finished = true
            throw error
        }
    }

    /// The next block of the current regular file's data: its offset in the
    /// file and the bytes (valid until the next call). nil at the end of the
    /// file's data. Gaps between blocks are holes (sparse files): the
    /// consumer treats them as zeros.
    public func nextDataBlock() throws(OCIError) -> (offset: UInt64, bytes: UnsafeRawBufferPointer)? {
        guard let entry = current, entry.isRegular, !finished else { return nil }
        var buffer: UnsafeRawPointer?
        var size = 0
        var offset: Int64 = 0
        var rc: Int32 = ARCHIVE_RETRY
        var attempts = 0
        while rc == ARCHIVE_RETRY {
            attempts += 1
            if attempts > 64 { throw failure("reading data keeps asking for a retry") }
            rc = archive_read_data_block(archive, &buffer, &size, &offset)
        }
        if rc == ARCHIVE_EOF { return nil }
        guard rc >= ARCHIVE_WARN else {
            finished = true
            throw failure("cannot read file data")
        }
        guard offset >= 0, size >= 0 else {
            finished = true
            throw failure("negative data offset \(offset)")
        }
        let start = UInt64(offset)
        let (end, overflow) = start.addingReportingOverflow(UInt64(size))
        guard !overflow, end <= entry.size, start >= dataEnd else {
            finished = true
            throw OCIError(.invalidLayer,
                           "malformed layer at entry '\(entry.path)': data block \(start)..<\(end) lies outside the file's \(entry.size) bytes or overlaps the previous block")
        }
        dataEnd = end
        if size == 0 {
            return (start, UnsafeRawBufferPointer(start: nil, count: 0))
        }
        return (start, UnsafeRawBufferPointer(start: buffer, count: size))
    }
}

/// strlen over a C string from libarchive.
func strlenBounded(_ s: UnsafePointer<CChar>) -> Int {
    var n = 0
    while s[n] != 0 { n += 1 }
    return n
}
