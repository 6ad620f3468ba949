import NIOCore

/// One ttrpc message frame (containerd/ttrpc PROTOCOL.md "Message Frame"):
/// a 10-byte header (data length and stream id, both big-endian 32 bits,
/// message type, flags) and the data.
public struct TTRPCFrame: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        case request = 1, response = 2, data = 3
    }

    /// Flags of a request or data frame.
    public static let remoteClosed: UInt8 = 0x01
    public static let remoteOpen: UInt8 = 0x02
    public static let noData: UInt8 = 0x04

    /// The protocol's limit on the data of one frame.
    public static let maxDataLength = 4 << 20
    public static let headerLength = 10

    public var streamID: UInt32
    public var kind: UInt8
    public var flags: UInt8
    public var data: [UInt8]

    public init(streamID: UInt32, kind: Kind, flags: UInt8 = 0, data: [UInt8]) {
        self.streamID = streamID
        self.kind = kind.rawValue
        self.flags = flags
        self.data = data
    }

    public func write(to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(data.count))
        buffer.writeInteger(streamID)
        buffer.writeInteger(kind)
        buffer.writeInteger(flags)
        buffer.writeBytes(data)
    }

    /// Reads one frame if `buffer` holds a whole one; nil when more bytes are needed.
    public static func read(from buffer: inout ByteBuffer) throws(ShimError) -> TTRPCFrame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length <= maxDataLength else {
            throw ShimError(.protocolError, "ttrpc frame of \(length) bytes exceeds the protocol's 4 MiB limit")
        }
        guard buffer.readableBytes >= headerLength + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        let stream = buffer.readInteger(as: UInt32.self)!
        let kind = buffer.readInteger(as: UInt8.self)!
        let flags = buffer.readInteger(as: UInt8.self)!
        let data = buffer.readBytes(length: Int(length))!
        var frame = TTRPCFrame(streamID: stream, kind: .data, flags: flags, data: data)
        frame.kind = kind
        return frame
    }
}

/// Cuts the inbound byte stream into frames.
struct TTRPCFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = TTRPCFrame

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try TTRPCFrame.read(from: &buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

/// Writes outbound frames.
struct TTRPCFrameEncoder: MessageToByteEncoder {
    typealias OutboundIn = TTRPCFrame

    func encode(data: TTRPCFrame, out: inout ByteBuffer) throws {
        guard data.data.count <= TTRPCFrame.maxDataLength else {
            throw ShimError(.protocolError, "ttrpc message of \(data.data.count) bytes exceeds the protocol's 4 MiB limit")
        }
        data.write(to: &out)
    }
}
