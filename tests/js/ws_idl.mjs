// Candid IDL of a CDK canister (PROTOCOL.md §2.1) plus the test canister's own methods, for @dfinity/agent actors.
export const idlFactory = ({ IDL }) => {
  const ClientKey = IDL.Record({ client_principal: IDL.Principal, client_nonce: IDL.Nat64 });
  const WebsocketMessage = IDL.Record({
    client_key: ClientKey,
    sequence_num: IDL.Nat64,
    timestamp: IDL.Nat64,
    is_service_message: IDL.Bool,
    content: IDL.Vec(IDL.Nat8),
  });
  const CanisterOutputMessage = IDL.Record({ client_key: ClientKey, key: IDL.Text, content: IDL.Vec(IDL.Nat8) });
  const CanisterOutputCertifiedMessages = IDL.Record({
    messages: IDL.Vec(CanisterOutputMessage),
    cert: IDL.Vec(IDL.Nat8),
    tree: IDL.Vec(IDL.Nat8),
    is_end_of_queue: IDL.Bool,
  });
  const Result = IDL.Variant({ Ok: IDL.Null, Err: IDL.Text });
  const AppMessage = IDL.Record({ text: IDL.Text, timestamp: IDL.Nat64 });
  return IDL.Service({
    ws_open: IDL.Func([IDL.Record({ client_nonce: IDL.Nat64, gateway_principal: IDL.Principal })], [Result], []),
    ws_close: IDL.Func([IDL.Record({ client_key: ClientKey })], [Result], []),
    ws_message: IDL.Func([IDL.Record({ msg: WebsocketMessage }), IDL.Opt(AppMessage)], [Result], []),
    ws_get_messages: IDL.Func(
      [IDL.Record({ nonce: IDL.Nat64 })],
      [IDL.Variant({ Ok: CanisterOutputCertifiedMessages, Err: IDL.Text })],
      ['query'],
    ),
    send: IDL.Func([IDL.Principal, IDL.Vec(IDL.Vec(IDL.Nat8))], [Result], []),
    close: IDL.Func([IDL.Principal], [Result], []),
  });
};

// The service-message variant, to decode OpenMessage / AckMessage contents.
export const serviceMessageType = (IDL) => {
  const ClientKey = IDL.Record({ client_principal: IDL.Principal, client_nonce: IDL.Nat64 });
  return IDL.Variant({
    OpenMessage: IDL.Record({ client_key: ClientKey }),
    AckMessage: IDL.Record({ last_incoming_sequence_num: IDL.Nat64 }),
    KeepAliveMessage: IDL.Record({ last_incoming_sequence_num: IDL.Nat64 }),
    CloseMessage: IDL.Record({
      reason: IDL.Variant({
        WrongSequenceNumber: IDL.Null,
        InvalidServiceMessage: IDL.Null,
        KeepAliveTimeout: IDL.Null,
        ClosedByApplication: IDL.Null,
      }),
    }),
  });
};

export const appMessageType = (IDL) => IDL.Record({ text: IDL.Text, timestamp: IDL.Nat64 });
