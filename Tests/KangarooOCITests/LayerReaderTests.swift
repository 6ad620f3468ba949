import Foundation
import Testing
@testable import KangarooOCI

/// Reads every entry and its data (holes filled with zeros).
func readAll(_ reader: LayerReader) throws -> [(entry: LayerEntry, data: [UInt8])] {
    var out: [(LayerEntry, [UInt8])] = []
    while let entry = try reader.next() {
        var data: [UInt8] = []
        while let block = try reader.nextDataBlock() {
            let offset = Int(block.offset)
            if data.count < offset { data.append(contentsOf: repeatElement(0, count: offset - data.count)) }
            data.append(contentsOf: block.bytes)
        }
        if entry.kind == .regular, data.count < Int(entry.size) {
            data.append(contentsOf: repeatElement(0, count: Int(entry.size) - data.count))
        }
        out.append((entry, data))
    }
    return out
}

/// Python that builds tars with tarfile; argv[1] is the output path.
private let pythonTar = """
import io, sys, tarfile
fmt = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}[sys.argv[2]]
def add(t, name, type=tarfile.REGTYPE, data=b"", **kw):
    info = tarfile.TarInfo(name)
    info.type = type
    info.size = len(data)
    info.mtime = 1700000000
    for k, v in kw.items():
        setattr(info, k, v)
    t.addfile(info, io.BytesIO(data) if data else None)
with tarfile.open(sys.argv[1], "w", format=fmt) as t:
    for spec in sys.argv[3:]:
        exec(spec)
"""

func makeTar(_ dir: TempDir, _ name: String, format: String = "pax", _ entries: [String]) throws -> [UInt8] {
    try python(pythonTar, [dir.file(name), format] + entries, cwd: dir.path)
    return try readBytes(dir.file(name))
}

@Suite struct LayerReaderTests {
    @Test func devicesFifoXattrsAndOwnership() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let cap = #"b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00".decode("utf-8", "surrogateescape")"#
        let bytes = try makeTar(dir, "a.tar", [
            #"add(t, "./", tarfile.DIRTYPE, mode=0o755, uid=0, gid=0)"#,
            #"add(t, "dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)"#,
            #"add(t, "dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=16, mode=0o660, uid=0, gid=6)"#,
            #"add(t, "run/fifo", tarfile.FIFOTYPE, mode=0o600)"#,
            "add(t, 'bin/ping', data=b'ELF!', mode=0o4755, uid=1000, gid=1001, pax_headers={'SCHILY.xattr.security.capability': \(cap), 'SCHILY.xattr.user.note': 'hi', 'mtime': '1700000000.25'})",
            #"add(t, "tmp", tarfile.DIRTYPE, mode=0o1777)"#,
        ])
        let entries = try readAll(try LayerReader(bytes: bytes))
        #expect(entries.map(\.entry.path) == ["", "dev/null", "dev/sda", "run/fifo", "bin/ping", "tmp"])
        #expect(entries[0].entry.kind == .directory)
        #expect(entries[0].entry.mode == 0o755)
        #expect(entries[1].entry.kind == .characterDevice(major: 1, minor: 3))
        #expect(entries[2].entry.kind == .blockDevice(major: 8, minor: 16))
        #expect(entries[2].entry.gid == 6)
        #expect(entries[3].entry.kind == .fifo)
        let ping = entries[4].entry
        #expect(ping.mode == 0o4755 && ping.uid == 1000 && ping.gid == 1001)
        #expect(ping.mtimeSeconds == 1700000000 && ping.mtimeNanoseconds == 250_000_000)
        #expect(entries[4].data == Array("ELF!".utf8))
        #expect(ping.xattrs["security.capability"] == [1, 0, 0, 2, 0, 0x20] + [UInt8](repeating: 0, count: 14))
        #expect(ping.xattrs["user.note"] == Array("hi".utf8))
        #expect(entries[5].entry.mode == 0o1777)
    }

    @Test(arguments: ["pax", "gnu", "ustar"])
    func linksAndCleanedPaths(_ format: String) throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let bytes = try makeTar(dir, "l.tar", format: format, [
            #"add(t, "/usr//bin/./tool", data=b"x" * 3000, mode=0o755)"#,
            #"add(t, "usr/bin/alias", tarfile.LNKTYPE, linkname="/usr/bin/tool")"#,
            #"add(t, "usr/bin/sym", tarfile.SYMTYPE, linkname="../../etc/x")"#,
        ])
        let entries = try readAll(try LayerReader(bytes: bytes))
        #expect(entries.count == 3)
        #expect(entries[0].entry.path == "usr/bin/tool")
        #expect(entries[0].entry.size == 3000 && entries[0].data == [UInt8](repeating: 0x78, count: 3000))
        #expect(entries[1].entry.kind == .hardlink(target: "usr/bin/tool"))
        // Symlink targets are kept verbatim: they resolve inside the container.
        #expect(entries[2].entry.kind == .symlink(target: "../../etc/x"))
    }

    @Test func longNamesInPaxAndGnu() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let long = String(repeating: "d", count: 200) + "/" + String(repeating: "f", count: 250)
        for format in ["pax", "gnu"] {
            let bytes = try makeTar(dir, "\(format).tar", format: format, [
                "add(t, '\(long)', data=b'long')",
                "add(t, 'l', tarfile.SYMTYPE, linkname='\(String(repeating: "t", count: 300))')",
            ])
            let entries = try readAll(try LayerReader(bytes: bytes))
            #expect(entries.map(\.entry.path) == [long, "l"])
            #expect(entries[1].entry.kind == .symlink(target: String(repeating: "t", count: 300)))
        }
    }

    @Test(arguments: [
        (#"add(t, "../evil", data=b"x")"#, OCIError.Code.hostileEntry),
        (#"add(t, "a/../../evil", data=b"x")"#, .hostileEntry),
        (#"add(t, "ok", tarfile.LNKTYPE, linkname="../../etc/shadow")"#, .hostileEntry),
        ("add(t, 'x/' + 'n' * 256, data=b'x')", .invalidLayer),
        (#"add(t, ".", tarfile.SYMTYPE, linkname="x")"#, .invalidLayer),
        (#"add(t, "h", tarfile.LNKTYPE, linkname="./")"#, .invalidLayer),
    ])
    func hostileEntriesAreRejected(_ spec: String, _ code: OCIError.Code) throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let bytes = try makeTar(dir, "h.tar", [#"add(t, "fine", data=b"ok")"#, spec])
        let reader = try LayerReader(bytes: bytes)
        #expect(try reader.next()?.path == "fine")
        do {
            let e = try reader.next()
            Issue.record("accepted \(String(describing: e))")
        } catch {
            #expect(error.code == code, "\(error)")
        }
        // After an error the reader stays at the end.
        #expect(try reader.next() == nil)
    }

    @Test(arguments: ["gnu", "posix"])
    func sparseFilesFromGNUTar(_ format: String) throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try sh("""
            mkdir t
            truncate -s 3M t/sparse
            printf 'middle' | dd of=t/sparse bs=1 seek=1048576 conv=notrunc status=none
            printf 'end' | dd of=t/sparse bs=1 seek=3145725 conv=notrunc status=none
            tar --format=\(format) --sparse -C t -cf s.tar sparse
            """, cwd: dir.path)
        let reader = try LayerReader(path: dir.filePath.appending("s.tar"))
        guard let entry = try reader.next() else { Issue.record("no entry"); return }
        #expect(entry.path == "sparse" && entry.size == 3 * 1024 * 1024)
        var stored = 0
        var content = [UInt8](repeating: 0, count: Int(entry.size))
        while let block = try reader.nextDataBlock() {
            stored += block.bytes.count
            content.replaceSubrange(Int(block.offset)..<Int(block.offset) + block.bytes.count, with: block.bytes)
        }
        #expect(stored < 1024 * 1024, "a sparse file must not expand its holes (\(stored) bytes)")
        #expect(Array(content[1048576..<1048582]) == Array("middle".utf8))
        #expect(Array(content[3145725...]) == Array("end".utf8))
        #expect(content[0..<1048576].allSatisfy { $0 == 0 })
        #expect(try reader.next() == nil)
    }

    @Test func xattrsFromGNUTarAndCompression() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try sh("""
            mkdir t && printf 'payload' > t/f && mkfifo t/p
            setfattr -n user.kangaroo -v 0sAAEC t/f
            tar --format=pax --xattrs --xattrs-include='*' --owner=0 --group=0 -C t -cf x.tar f p
            gzip -c x.tar > x.tar.gz
            zstd -q -c x.tar > x.tar.zst
            """, cwd: dir.path)
        for (name, compression) in [("x.tar", LayerReader.Compression.auto), ("x.tar.gz", .auto),
                                    ("x.tar.zst", .auto), ("x.tar.gz", .gzip), ("x.tar.zst", .zstd), ("x.tar", .none)] {
            let entries = try readAll(try LayerReader(path: dir.filePath.appending(name), compression: compression))
            #expect(entries.map(\.entry.path) == ["f", "p"], "\(name)")
            #expect(entries.first?.data == Array("payload".utf8))
            #expect(entries.first?.entry.xattrs["user.kangaroo"] == [0, 1, 2], "\(name)")
            #expect(entries.last?.entry.kind == .fifo)
        }
    }

    @Test func unreadDataIsSkipped() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let bytes = try makeTar(dir, "s.tar", [
            #"add(t, "big", data=b"a" * 100000)"#, #"add(t, "small", data=b"b")"#,
        ])
        let reader = try LayerReader(bytes: bytes)
        #expect(try reader.next()?.path == "big")
        _ = try reader.nextDataBlock()
        let small = try reader.next()
        #expect(small?.path == "small")
        #expect(try reader.nextDataBlock().map { Array($0.bytes) } == [0x62])
        #expect(try reader.nextDataBlock() == nil)
        #expect(try reader.next() == nil)
    }

    @Test func truncatedAndGarbageInputsFailCleanly() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let bytes = try makeTar(dir, "t.tar", [#"add(t, "file", data=b"z" * 5000)"#])
        // Truncated in the middle of the data.
        let truncated = Array(bytes[..<2000])
        do throws(OCIError) {
            let reader = try LayerReader(bytes: truncated)
            while try reader.next() != nil {
                while try reader.nextDataBlock() != nil {}
            }
            Issue.record("truncated archive was accepted")
        } catch {
            #expect(error.code == .invalidLayer)
            #expect(error.message.contains("file"), "\(error)")
        }
        // Garbage.
        #expect(throws: OCIError.self) {
            _ = try readAll(try LayerReader(bytes: [UInt8](repeating: 0x41, count: 4096)))
        }
        // Missing file.
        do {
            _ = try LayerReader(path: dir.filePath.appending("missing.tar"))
            Issue.record("opened a missing file")
        } catch {
            #expect(error.code == .notFound)
        }
    }

    @Test func emptyLayersHaveNoEntries() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try sh("head -c 1024 /dev/zero > zeros.tar && gzip -c zeros.tar > zeros.tar.gz && : > empty", cwd: dir.path)
        #expect(try LayerReader(bytes: []).next() == nil)
        for name in ["zeros.tar", "zeros.tar.gz", "empty"] {
            #expect(try LayerReader(path: dir.filePath.appending(name)).next() == nil, "\(name)")
        }
    }

    @Test func seedCorpusReadsWithoutErrors() throws {
        // The fuzz seed corpus doubles as a regression set.
        let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../fuzz/tar/corpus").standardized.path
        let names = (try? FileManager.default.contentsOfDirectory(atPath: corpus)) ?? []
        #expect(names.count >= 6)
        for name in names {
            let entries = try readAll(try LayerReader(bytes: readBytes(corpus + "/" + name)))
            #expect(!entries.isEmpty, "\(name)")
        }
    }
}
