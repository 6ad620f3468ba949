/// Little-endian byte writing into a growable buffer (all on-disk integers
/// of EROFS and the Kangaroo extension are little-endian).
struct ByteWriter {
    var bytes: [UInt8]

    init(capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    var count: Int { bytes.count }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { bytes.append(UInt8(v & 0xFF)); bytes.append(UInt8(v >> 8)) }
    mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8((v >> (8 * UInt32(i))) & 0xFF)) } }
    mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8((v >> (8 * UInt64(i))) & 0xFF)) } }
    mutating func append<C: Collection>(_ c: C) where C.Element == UInt8 { bytes.append(contentsOf: c) }
    mutating func zeros(_ n: Int) { if n > 0 { bytes.append(contentsOf: repeatElement(0, count: n)) } }
    mutating func pad(to alignment: Int) {
        let rem = bytes.count % alignment
        if rem != 0 { zeros(alignment - rem) }
    }
    /// Pads with zeros up to absolute length `length`.
    mutating func pad(toLength length: Int) { zeros(length - bytes.count) }
}

extension Array where Element == UInt8 {
    mutating func putU16(_ v: UInt16, at o: Int) { self[o] = UInt8(v & 0xFF); self[o + 1] = UInt8(v >> 8) }
    mutating func putU32(_ v: UInt32, at o: Int) { for i in 0..<4 { self[o + i] = UInt8((v >> (8 * UInt32(i))) & 0xFF) } }
    mutating func putU64(_ v: UInt64, at o: Int) { for i in 0..<8 { self[o + i] = UInt8((v >> (8 * UInt64(i))) & 0xFF) } }
}

/// Bounds-checked little-endian reads from untrusted bytes; every access
/// throws `ImageError.corruptBootstrap` instead of trapping.
struct ByteView: Sendable {
    let bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var count: Int { bytes.count }

    @inline(__always)
    func check(_ offset: Int, _ length: Int, _ what: @autoclosure () -> String) throws(ImageError) {
        guard offset >= 0, length >= 0, offset <= bytes.count, length <= bytes.count - offset else {
            throw ImageError.corrupt("\(what()) at offset \(offset) length \(length) lies outside the \(bytes.count)-byte bootstrap")
        }
    }

    /// Converts an untrusted 64-bit offset to Int with a bounds check.
    func offset(_ value: UInt64, length: UInt64, _ what: @autoclosure () -> String) throws(ImageError) -> Int {
        guard value <= UInt64(bytes.count), length <= UInt64(bytes.count) - value else {
            throw ImageError.corrupt("\(what()) at offset \(value) length \(length) lies outside the \(bytes.count)-byte bootstrap")
        }
        return Int(value)
    }

    func u8(_ o: Int) throws(ImageError) -> UInt8 {
        try check(o, 1, "byte")
        return bytes[o]
    }
    func u16(_ o: Int) throws(ImageError) -> UInt16 {
        try check(o, 2, "u16")
        return UInt16(bytes[o]) | UInt16(bytes[o + 1]) << 8
    }
    func u32(_ o: Int) throws(ImageError) -> UInt32 {
        try check(o, 4, "u32")
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(bytes[o + i]) << (8 * UInt32(i)) }
        return v
    }
    func u64(_ o: Int) throws(ImageError) -> UInt64 {
        try check(o, 8, "u64")
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(bytes[o + i]) << (8 * UInt64(i)) }
        return v
    }
    func slice(_ o: Int, _ n: Int) throws(ImageError) -> ArraySlice<UInt8> {
        try check(o, n, "range")
        return bytes[o..<(o + n)]
    }
}
