//! Bad input: every refused message leaves the round's outcome unchanged (the round is compared,
//! bit for bit, with an undisturbed run on the same seeds).

use crate::common;

use std::collections::BTreeMap;

use common::{Drop, Round, assert_close, clipped_sum, seed_for};
use flotilla_secagg::{
    Aggregate, Client, ClientError, ClientId, ClientMessage, DecodeError, MaskedInput, Params,
    Rejected, RevealedShare, ServerMessage, Stage,
};

fn params() -> Params {
    Params::new(10, 4, 6, 40, 1.0).unwrap()
}

fn drops() -> BTreeMap<ClientId, Drop> {
    BTreeMap::from([
        (ClientId(103), Drop::BeforeMaskedInput),
        (ClientId(112), Drop::BeforeUnmasking),
    ])
}

fn clean() -> Aggregate {
    Round::new(params(), 5, 10, drops()).run().0.unwrap()
}

fn first(m: &BTreeMap<ClientId, Vec<u8>>) -> (ClientId, Vec<u8>) {
    m.iter().next().map(|(k, v)| (*k, v.clone())).unwrap()
}

fn decode(b: &[u8]) -> ClientMessage {
    ClientMessage::from_bytes(b, &params()).unwrap()
}

#[test]
fn refused_messages_leave_the_outcome_unchanged() {
    let expected = clean();
    let r0 = Round::new(params(), 5, 10, drops());
    assert_close(&expected, &clipped_sum(r0.contributors(), 40, 1.0));

    let mut r = Round::new(params(), 5, 10, drops());
    let (a, b) = (ClientId(100), ClientId(106));

    // Stage 0.
    r.advertise();
    let adv = ClientMessage::AdvertiseKeys(r.clients[&a].advertise());
    assert_eq!(
        r.server.handle(a, adv.clone()),
        Err(Rejected::Duplicate(a)),
        "replayed advertisement"
    );
    assert_eq!(
        r.server.handle(b, adv.clone()),
        Err(Rejected::SenderMismatch {
            claimed: a,
            authenticated: b
        })
    );
    let old = Client::new(params(), ClientId(999), 4, seed_for(4, 999)).advertise();
    assert!(matches!(
        r.server
            .handle(ClientId(999), ClientMessage::AdvertiseKeys(old.clone())),
        Err(Rejected::WrongRound {
            expected: 5,
            got: 4
        })
    ));
    let mut low = Client::new(params(), ClientId(999), 5, seed_for(5, 999)).advertise();
    low.c_pk = [0; 32];
    assert!(matches!(
        r.server
            .handle(ClientId(999), ClientMessage::AdvertiseKeys(low)),
        Err(Rejected::InvalidKey { .. })
    ));
    let mut copy = Client::new(params(), ClientId(999), 5, seed_for(5, 999)).advertise();
    let ClientMessage::AdvertiseKeys(orig) = &adv else {
        unreachable!()
    };
    copy.s_pk = orig.s_pk;
    assert!(matches!(
        r.server
            .handle(ClientId(999), ClientMessage::AdvertiseKeys(copy)),
        Err(Rejected::InvalidKey { .. })
    ));
    assert!(matches!(
        r.server.receive(a, &[0xff; 7]),
        Err(Rejected::Decode(DecodeError::Malformed(_)))
    ));
    let mut trailing = adv.to_bytes();
    trailing.push(0);
    assert_eq!(
        r.server.receive(a, &trailing),
        Err(Rejected::Decode(DecodeError::TrailingBytes(1)))
    );

    // Stage 1.
    let shares = r.share_keys().unwrap();
    assert!(matches!(
        r.server.handle(a, adv.clone()),
        Err(Rejected::WrongStage {
            expected: Stage::ShareKeys,
            ..
        })
    ));
    let ClientMessage::ShareKeys(sk) = decode(&shares[&a]) else {
        unreachable!()
    };
    let mut wrong_peer = sk.clone();
    wrong_peer.shares[0].recipient = ClientId(5000);
    assert!(matches!(
        r.server.handle(a, ClientMessage::ShareKeys(wrong_peer)),
        Err(Rejected::NotNeighbour { .. })
    ));
    let mut short = sk.clone();
    short.shares.pop();
    assert!(matches!(
        r.server.handle(a, ClientMessage::ShareKeys(short)),
        Err(Rejected::WrongLength { what: "shares", .. })
    ));
    let mut cut = sk.clone();
    cut.shares[1].ciphertext.truncate(10);
    assert!(matches!(
        r.server.handle(a, ClientMessage::ShareKeys(cut)),
        Err(Rejected::BadShare { .. })
    ));
    let mut other_round = sk.clone();
    other_round.round = 6;
    assert!(matches!(
        r.server.handle(a, ClientMessage::ShareKeys(other_round)),
        Err(Rejected::WrongRound { .. })
    ));
    r.send_all(&shares);
    assert_eq!(
        r.server.handle(a, ClientMessage::ShareKeys(sk.clone())),
        Err(Rejected::Duplicate(a)),
        "replay"
    );

    // Stage 2: bundles delivered to clients, tampered first.
    let bundles = r.server.close_share_keys().unwrap();
    let bundle = bundles[&a].clone();
    let client = r.clients.get_mut(&a).unwrap();
    let mut flipped = bundle.clone();
    flipped.shares[0].ciphertext[5] ^= 0x40;
    assert!(matches!(
        client.handle_shares(&flipped),
        Err(ClientError::Rejected(Rejected::BadShare { .. }))
    ));
    let mut misrouted = bundle.clone();
    misrouted.shares[0].ciphertext = bundles[&b].shares[0].ciphertext.clone();
    assert!(matches!(
        client.handle_shares(&misrouted),
        Err(ClientError::Rejected(Rejected::BadShare { .. }))
    ));
    let mut to_other = bundle.clone();
    to_other.recipient = b;
    assert!(matches!(
        client.handle_shares(&to_other),
        Err(ClientError::Rejected(Rejected::WrongRecipient { .. }))
    ));
    let mut late = bundle.clone();
    late.round = 4;
    assert!(matches!(
        client.handle_shares(&late),
        Err(ClientError::Rejected(Rejected::WrongRound { .. }))
    ));
    let mut unsorted = bundle.clone();
    unsorted.shares.swap(0, 1);
    assert!(matches!(
        client.handle_shares(&unsorted),
        Err(ClientError::Rejected(Rejected::MalformedList(_)))
    ));
    // A share sealed in another round (same keys, same peers) does not open in this one.
    let mut other = Round::new(params(), 6, 10, drops());
    other.advertise();
    let other_shares = other.share_keys().unwrap();
    other.send_all(&other_shares);
    let other_bundles = other.server.close_share_keys().unwrap();
    let mut stale = bundle.clone();
    for (s, o) in stale.shares.iter_mut().zip(&other_bundles[&a].shares) {
        s.ciphertext = o.ciphertext.clone();
    }
    assert!(matches!(
        client.handle_shares(&stale),
        Err(ClientError::Rejected(Rejected::BadShare { .. }))
    ));
    assert!(matches!(
        client.masked_input(&[0.0; 40]),
        Err(ClientError::Rejected(Rejected::WrongStage { .. }))
    ));
    client.handle_shares(&bundle).unwrap();
    assert!(
        matches!(
            client.handle_shares(&bundle),
            Err(ClientError::Rejected(Rejected::WrongStage { .. }))
        ),
        "replay"
    );
    assert!(matches!(
        client.masked_input(&[0.0; 39]),
        Err(ClientError::InvalidUpdate(_))
    ));
    assert!(matches!(
        client.masked_input(&[f32::NAN; 40]),
        Err(ClientError::InvalidUpdate(_))
    ));

    // Re-run the stage normally on a fresh copy of the same round, and attack the server.
    let mut r = Round::new(params(), 5, 10, drops());
    r.advertise();
    let m = r.share_keys().unwrap();
    r.send_all(&m);
    let masked = r.masked_inputs().unwrap();
    let (c, bytes) = first(&masked);
    let ClientMessage::MaskedInput(mi) = decode(&bytes) else {
        unreachable!()
    };
    let mut long = mi.clone();
    long.masked.push(1);
    assert_eq!(
        r.server.handle(c, ClientMessage::MaskedInput(long)),
        Err(Rejected::WrongLength {
            what: "masked input",
            expected: 40,
            got: 41
        })
    );
    let dropped = ClientId(103);
    let forged = MaskedInput {
        round: 5,
        sender: dropped,
        masked: vec![0; 40],
    };
    assert_eq!(
        r.server.handle(c, ClientMessage::MaskedInput(forged)),
        Err(Rejected::SenderMismatch {
            claimed: dropped,
            authenticated: c
        })
    );
    let outsider = MaskedInput {
        round: 5,
        sender: ClientId(7),
        masked: vec![0; 40],
    };
    assert_eq!(
        r.server
            .handle(ClientId(7), ClientMessage::MaskedInput(outsider)),
        Err(Rejected::NotInCohort(ClientId(7)))
    );
    r.send_all(&masked);
    assert_eq!(
        r.server.receive(c, &bytes),
        Err(Rejected::Duplicate(c)),
        "replayed masked input"
    );

    // Stage 3.
    let requests = r.server.close_masked_input().unwrap();
    assert!(matches!(
        r.server.receive(c, &bytes),
        Err(Rejected::WrongStage { .. })
    ));
    let req = requests[&c].clone();
    let client = r.clients.get_mut(&c).unwrap();
    let mut both = req.clone();
    both.dropped.push(req.survivors[0]);
    assert_eq!(
        client.handle_unmask(&both).unwrap_err(),
        ClientError::Rejected(Rejected::BothSecretsRequested(req.survivors[0]))
    );
    let mut moved = req.clone();
    let s = moved.survivors.remove(0);
    moved.dropped.push(s);
    moved.dropped.sort();
    // `moved` reclassifies a survivor as dropped: still a partition, so the client answers it
    // (below), and the server refuses the answer as not matching its own request.
    let mut missing = req.clone();
    missing.survivors.pop();
    assert!(matches!(
        client.handle_unmask(&missing),
        Err(ClientError::Rejected(Rejected::BadUnmaskRequest(_)))
    ));
    let mut stranger = req.clone();
    stranger.survivors.push(ClientId(7));
    assert!(matches!(
        client.handle_unmask(&stranger),
        Err(ClientError::Rejected(Rejected::NotNeighbour { .. }))
    ));
    let mut wrong_round = req.clone();
    wrong_round.round = 9;
    assert!(matches!(
        client.handle_unmask(&wrong_round),
        Err(ClientError::Rejected(Rejected::WrongRound { .. }))
    ));
    let wrong_answer = client.handle_unmask(&moved).unwrap();
    // The server refuses a response that does not match its request…
    assert!(matches!(
        r.server
            .handle(c, ClientMessage::Unmask(wrong_answer.clone())),
        Err(Rejected::WrongLength { .. })
    ));
    // …and the client answers only once.
    assert!(matches!(
        client.handle_unmask(&req),
        Err(ClientError::Rejected(Rejected::WrongStage { .. }))
    ));

    // Build the right response from a fresh client with the same seed, then corrupt it.
    let mut replay = Round::new(params(), 5, 10, drops());
    replay.advertise();
    let m = replay.share_keys().unwrap();
    replay.send_all(&m);
    let m = replay.masked_inputs().unwrap();
    replay.send_all(&m);
    let good = replay.unmask().unwrap();
    let ClientMessage::Unmask(resp) = decode(&good[&c]) else {
        unreachable!()
    };
    let mut forged = resp.clone();
    forged.seed_shares[0].share[7] ^= 1;
    assert!(matches!(
        r.server.handle(c, ClientMessage::Unmask(forged)),
        Err(Rejected::BadShare { .. })
    ));
    let mut relabelled = resp.clone();
    relabelled.seed_shares[0].share[0] ^= 3;
    assert!(matches!(
        r.server.handle(c, ClientMessage::Unmask(relabelled)),
        Err(Rejected::BadShare { .. })
    ));
    let mut stolen = resp.clone();
    stolen.seed_shares[0] = RevealedShare {
        owner: stolen.seed_shares[0].owner,
        share: vec![1; 10],
    };
    assert!(matches!(
        r.server.handle(c, ClientMessage::Unmask(stolen)),
        Err(Rejected::BadShare { .. })
    ));
    let mut reordered = resp.clone();
    if reordered.seed_shares.len() > 1 {
        reordered.seed_shares.swap(0, 1);
        assert!(matches!(
            r.server.handle(c, ClientMessage::Unmask(reordered)),
            Err(Rejected::MalformedList(_))
        ));
    }
    r.server
        .handle(c, ClientMessage::Unmask(resp.clone()))
        .unwrap();
    assert_eq!(
        r.server.handle(c, ClientMessage::Unmask(resp)),
        Err(Rejected::Duplicate(c)),
        "replayed response"
    );
    for (&id, bytes) in &good {
        if id != c {
            r.server.receive(id, bytes).unwrap();
        }
    }
    let agg = r.server.finish().unwrap();
    assert_eq!(agg, expected, "outcome unchanged by every refused message");
}

#[test]
fn server_message_decoding_is_bounded() {
    let p = params();
    let huge = vec![0u8; p.max_server_message_len() + 1];
    assert!(matches!(
        ServerMessage::from_bytes(&huge, &p),
        Err(DecodeError::TooLarge { .. })
    ));
    assert!(matches!(
        ServerMessage::from_bytes(&[], &p),
        Err(DecodeError::Malformed(_))
    ));
    // A roster claiming billions of entries in a few bytes is refused without allocating them.
    let bytes = [0u8, 5, 0xff, 0xff, 0xff, 0xff, 0x0f];
    assert!(ServerMessage::from_bytes(&bytes, &p).is_err());
}

#[test]
fn client_refuses_a_roster_with_other_parameters_or_without_it() {
    let p = params();
    let mut r = Round::new(p, 5, 10, BTreeMap::new());
    r.advertise();
    let roster = r.server.close_advertise().unwrap();
    let mut c = Client::new(
        Params::new(10, 4, 6, 41, 1.0).unwrap(),
        ClientId(100),
        5,
        seed_for(5, 100),
    );
    assert!(matches!(
        c.handle_roster(&roster),
        Err(ClientError::Rejected(Rejected::ParamsMismatch(_)))
    ));
    let mut outsider = Client::new(p, ClientId(1), 5, seed_for(5, 1));
    assert!(matches!(
        outsider.handle_roster(&roster),
        Err(ClientError::Rejected(Rejected::NotInCohort(_)))
    ));
    let mut unsorted = roster.clone();
    unsorted.clients.swap(0, 1);
    let c = r.clients.get_mut(&ClientId(100)).unwrap();
    assert!(matches!(
        c.handle_roster(&unsorted),
        Err(ClientError::Rejected(Rejected::MalformedList(_)))
    ));
    let ids: Vec<ClientId> = roster.clients.iter().map(|e| e.client).collect();
    let peer =
        flotilla_secagg::graph::Graph::new(&ids, 6, roster.graph_seed).neighbours(ClientId(100))[0];
    let mut low_order = roster.clone();
    low_order
        .clients
        .iter_mut()
        .find(|e| e.client == peer)
        .unwrap()
        .c_pk = [0; 32];
    assert_eq!(
        c.handle_roster(&low_order).unwrap_err(),
        ClientError::Rejected(Rejected::InvalidKey {
            client: peer,
            reason: "low-order point"
        })
    );
    c.handle_roster(&roster).unwrap();
    assert!(
        matches!(
            c.handle_roster(&roster),
            Err(ClientError::Rejected(Rejected::WrongStage { .. }))
        ),
        "replay"
    );
}
