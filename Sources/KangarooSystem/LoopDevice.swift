#if canImport(Glibc)
import Glibc
#endif
import CKangaroo
import SystemPackage

/// Loop devices over regions of a file (the sandbox disks: device-mapper is
/// not available on this kernel).
public enum LoopDevice {
    /// Attaches `length` bytes at `offset` of the open file `fd`; returns the
    /// device number N of /dev/loopN.
    public static func attach(fd: Int32, offset: UInt64, length: UInt64) throws(Errno) -> Int {
        let rc = kr_loop_attach(fd, offset, length)
        guard rc >= 0 else { throw Errno(rawValue: -rc) }
        return Int(rc)
    }

    /// Detaches /dev/loopN (nothing when it is not attached).
    public static func detach(_ number: Int) throws(Errno) {
        let rc = kr_loop_detach(Int32(number))
        guard rc == 0 else { throw Errno(rawValue: -rc) }
    }

    /// An attached loop device: its backing file and region (sysfs).
    public struct Attached: Sendable, Equatable {
        public var number: Int
        public var backingFile: String
        public var offset: UInt64
        public var length: UInt64
    }

    /// Every attached loop device.
    public static func attached() -> [Attached] {
        ((try? FileSystem.list("/sys/block")) ?? []).compactMap { name -> Attached? in
            guard name.hasPrefix("loop"), let n = Int(name.dropFirst(4)) else { return nil }
            let dir = "/sys/block/\(name)/loop"
            guard let file = try? FileSystem.readString(dir + "/backing_file") else { return nil }
            func number(_ f: String) -> UInt64 { UInt64((try? FileSystem.readString(dir + "/" + f))?.filter(\.isNumber) ?? "") ?? 0 }
            return Attached(number: n, backingFile: file.trimmingCharacters(in: "\n"), offset: number("offset"), length: number("sizelimit"))
        }
    }
}

extension String {
    func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.last == set { s = s.dropLast() }
        return String(s)
    }
}
