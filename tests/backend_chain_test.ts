/**
 * {@link BackendChain} alone, over fake backends: when it moves, how often it builds and
 * disposes, what it says when nothing is left, and a move that fails. The models over it are
 * tested in tests/device_lost_cpu_test.ts (CPU) and tests/webgpu_lost_test.ts (a real device).
 */

import assert from "node:assert/strict";
import { DeviceLostError } from "../mod.ts";
import type { BackendName } from "../src/backend.ts";
import { BackendChain } from "../src/backend_chain.ts";
import { quiet } from "./quiet.ts";

/** A backend that is only a name, a loss flag and a dispose count. */
class FakeBackend {
  lostReason: string | undefined;
  disposed = 0;
  constructor(readonly name: BackendName) {}
  dispose(): void {
    this.disposed++;
  }
}

Deno.test("backend chain: a live backend is kept; a lost one with nothing left is an error", async () => {
  const only = new FakeBackend("webgpu");
  const chain = new BackendChain(only);
  assert.equal(await chain.live(), only);
  only.lostReason = "WebGPU device lost (test)";
  await assert.rejects(() => chain.live(), (e) => {
    assert.ok(e instanceof DeviceLostError);
    assert.match(e.message, /^WebGPU device lost \(test\); no backend to move to/);
    return true;
  });
  assert.equal(chain.current, only);
  assert.equal(only.disposed, 0);
});

Deno.test("backend chain: a lost backend moves down the chain, once for concurrent callers", async () => {
  const first = new FakeBackend("webgpu");
  const built: BackendName[][] = [];
  const chain = new BackendChain<FakeBackend>(first, ["wasm", "ref"], (names) => {
    built.push([...names]);
    return Promise.resolve({ backend: new FakeBackend(names[0]), rest: names.slice(1) });
  });
  assert.equal(await chain.live(), first);
  assert.equal(built.length, 0, "nothing is built while the device lives");

  first.lostReason = "gone";
  const { value: [a, b], logged } = await quiet(() => Promise.all([chain.live(), chain.live()]));
  assert.equal(a, b, "both callers get the one new backend");
  assert.equal(a.name, "wasm");
  assert.equal(chain.current, a);
  assert.deepEqual(built, [["wasm", "ref"]]);
  assert.equal(first.disposed, 1, "the lost backend is disposed once");
  assert.deepEqual(logged, ['mamba: gone; moving the model to the "wasm" backend']);

  a.lostReason = "gone again";
  const second = (await quiet(() => chain.live())).value;
  assert.equal(second.name, "ref");
  assert.deepEqual(built, [["wasm", "ref"], ["ref"]]);

  second.lostReason = "gone for good";
  await assert.rejects(() => chain.live(), /gone for good; no backend to move to/);
  assert.equal(built.length, 2);
});

Deno.test("backend chain: a move that fails is tried again on the next call", async () => {
  const first = new FakeBackend("webgpu");
  first.lostReason = "gone";
  let calls = 0;
  const chain = new BackendChain<FakeBackend>(first, ["wasm"], (names) => {
    if (++calls === 1) return Promise.reject(new Error("wasm does not start"));
    return Promise.resolve({ backend: new FakeBackend(names[0]), rest: [] });
  });
  await quiet(() => assert.rejects(() => chain.live(), /wasm does not start/));
  assert.equal(chain.current, first);
  assert.equal(first.disposed, 0, "the lost backend is kept until one replaces it");
  const next = (await quiet(() => chain.live())).value;
  assert.equal(next.name, "wasm");
  assert.equal(first.disposed, 1);
});

Deno.test("backend chain: disposed during a move, the chain frees what the move built", async () => {
  const first = new FakeBackend("webgpu");
  first.lostReason = "gone";
  let release!: () => void;
  const started = new Promise<void>((r) => release = r);
  let built: FakeBackend | undefined;
  const chain = new BackendChain<FakeBackend>(first, ["wasm"], async (names) => {
    await started;
    built = new FakeBackend(names[0]);
    return { backend: built, rest: [] };
  });
  const { value: outcome } = await quiet(async () => {
    const moving = chain.live().then(() => "moved", (e: Error) => e.name);
    chain.dispose(); // while the next backend is being built
    release();
    return await moving;
  });
  assert.equal(outcome, "BackendError", "the caller learns the model went away");
  assert.equal(built?.disposed, 1, "the backend the move built is freed");
  assert.equal(first.disposed, 1, "the lost backend is freed once");
  assert.equal(chain.current, first, "nothing was switched to");
  chain.dispose();
  assert.equal(first.disposed, 1, "dispose is idempotent");
});

Deno.test("backend chain: with the model's list used up, the error says the list was tried", async () => {
  const first = new FakeBackend("webgpu");
  const chain = new BackendChain<FakeBackend>(
    first,
    ["wasm"],
    (names) => Promise.resolve({ backend: new FakeBackend(names[0]), rest: [] }),
  );
  first.lostReason = "gone";
  const next = (await quiet(() => chain.live())).value;
  next.lostReason = "gone again";
  await assert.rejects(() => chain.live(), (e: Error) => {
    assert.ok(e instanceof DeviceLostError);
    assert.match(
      e.message,
      /no backend to move to \(every backend of the model's list was tried\)/,
    );
    return true;
  });
});
