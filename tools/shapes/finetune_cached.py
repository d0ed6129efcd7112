"""Fine-tunes the LM of a trained shapes model on cached image tokens (CPU, PyTorch 1.13).

  python3 tools/shapes/finetune_cached.py --src tools/shapes/out/run1 --out tools/shapes/out/ft

The vision tower and the projector stay frozen, so their output (64 image tokens per region) is
computed once for a pool of regions and cached; each step then draws regions from the pool and
questions for them on the fly (any question type, any asked word), so the LM sees every question
about every cached region. Only the LM (token embedding included) trains, loss on answer tokens only,
with the exact LLaVA-1.5 prompt of train.py. Yes/no questions are over-weighted, half of them "yes"
and half naming another word, because the GPU run never learnt to compare the asked word with the
truth. Everything depends only on --seed (regions, questions, torch init of nothing: the weights
come from --src), so a rerun on the same CPU gives the same model.

Answer format for yes/no (`--yes-no`): "fact-first" = "It is a star, so the answer is no." (the truth
is emitted first, so the verdict token can compare two words already in the context), or
"verdict-first" = "No, it is a star." (the shipped model's format). src/shapes/check.ts accepts both.
Scaffolding for the comparison (`--probe-weight`, `--attn-weight`): with exactly half "yes", the verdict
depends only on whether the asked word equals the truth, and that loss alone gives no first-order
gradient to either half of the comparison, so it sat at "always yes". Two training-only losses give it:
linear probes on the hidden state after `--probe-layer` layers at the verdict position name the asked
word and the region's true colour and shape, and one attention head (`--attn-layer`, `--attn-head`) is
taught to look at the asked word from there. With both, the LM's own MLPs learn the equality in a
few hundred steps. The probes are not saved; the model stays a plain LLaMA.
Follow-up turns (`--followup P`): with probability P a second question follows the first
answer's </s> as ` USER: {q2} ASSISTANT:` and only the second answer is scored, so later turns of a
conversation answer their own question.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402
import world  # noqa: E402

# Sampling weights of the question types for a region that is an object (mask or box).
WEIGHTS = {
    "colour": 0.3, "shape": 0.3, "what": 0.3, "describe": 0.15,
    "is_shape": 1.5, "is_colour": 1.5, "where": 0.3, "count": 0.15,
}  # fmt: skip
WHOLE_SHARE = 0.15  # regions that are the whole image (asked how many objects)
VERDICT_WEIGHT = 3.0
EVAL_PRIOR = False  # --eval-prior: draw the asked word as the evaluation does
# Scaffolding probes (--probe-weight): linear heads on the hidden state after layer PROBE_LAYER at the
# position that emits the verdict, trained to name the asked word and the region's true colour and
# shape. They give first-order gradient to the two halves of the comparison, which the verdict loss
# alone cannot (see the module docstring); they are dropped when the model is saved.
PROBE_LAYER = 2
PROBE_WEIGHT = 0.0
# Attention supervision (--attn-weight): head ATTN_HEAD of layer ATTN_LAYER (0-based) is taught to look
# at the asked word from the verdict position, the retrieval the probes alone left at ~40 %.
ATTN_LAYER, ATTN_HEAD, ATTN_WEIGHT = 1, 3, 0.0
QUESTION_MARK = 29973  # "?" in the LLaMA vocabulary (asserted on every supervised question)
WORDS = list(world.SHAPES) + list(world.COLOUR_NAMES)  # the asked word's classes


def verdict_index(answer_ids: list[int], answer: str) -> int:
    """Index (in answer tokens + </s>) of the yes/no token, or -1."""
    if answer.startswith(("Yes", "No")):
        return 0
    if answer.endswith((" yes.", " no.")):
        return len(answer_ids) - 2  # before "." (the ids here exclude </s>)
    return -1


@torch.no_grad()
def build_cache(vision, projector, c, seed: int, scene_seed: int, first: int, count: int, threads: int, whole_share=None):
    """Image tokens [N, 64, D] and truths for `count` regions of scenes first..first+count-1
    (`whole_share` of them the whole image; default WHOLE_SHARE)."""
    whole = WHOLE_SHARE if whole_share is None else whole_share
    torch.set_num_threads(threads)
    tokens, truths = [], []
    size = c["image_size"]
    for s in range(0, count, 64):
        images, alphas = [], []
        for i in range(first + s, first + min(count, s + 64)):
            rng = train.item_rng(seed, i)
            scene = world.generate_scene(scene_seed, i)
            image, masks = world.render_scene(scene)
            k = rng.randint(len(scene.objects))
            obj = scene.objects[k]
            u = rng.rand()
            if u < whole:
                mask, kind = None, "whole"
            elif u < whole + (1 - whole) * 0.75:
                mask, kind = masks[k], "mask"
            else:
                mask, kind = world.box_mask(scene, obj), "box"
            images.append(train.preprocess_image(image, size))
            alphas.append(train.preprocess_mask(mask, size))
            truths.append({"colour": obj.colour, "shape": obj.shape, "count": len(scene.objects),
                           "position": world.position_name(obj, scene.width, scene.height), "kind": kind})  # fmt: skip
        feats, _ = vision(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(alphas)))
        tokens.append(projector(feats))
    return torch.cat(tokens), truths


def sample_question(rng: np.random.RandomState, truth: dict, qtype: str | None = None):
    if qtype is None:
        if truth["kind"] == "whole":
            qtype = "count"
        else:
            types = list(WEIGHTS)
            w = np.array([WEIGHTS[t] for t in types])
            qtype = types[rng.choice(len(types), p=w / w.sum())]
    template = world.TEMPLATES[qtype][rng.randint(len(world.TEMPLATES[qtype]))]
    asked = None
    if qtype in ("is_shape", "is_colour"):
        names = world.SHAPES if qtype == "is_shape" else world.COLOUR_NAMES
        true_word = truth["shape" if qtype == "is_shape" else "colour"]
        others = [n for n in names if n != true_word]
        if EVAL_PRIOR:
            # The evaluation's draw (train.py make_item, src/shapes/questions.ts): the truth half the
            # time, else any word, so "yes" is 62.5 % (shapes) / 58 % (colours).
            asked = true_word if rng.rand() < 0.5 else names[rng.randint(len(names))]
        else:
            # Exactly half "yes": the model cannot score by always agreeing.
            asked = true_word if rng.rand() < 0.5 else others[rng.randint(len(others))]
        question = template.format(shape=asked, colour=asked)
    else:
        question = template
    return qtype, question, asked


class Probes(torch.nn.Module):
    """Asked word (10 classes), true colour (6) and true shape (4) from one hidden state."""

    def __init__(self, dim: int):
        super().__init__()
        self.asked = torch.nn.Linear(dim, len(WORDS))
        self.colour = torch.nn.Linear(dim, len(world.COLOUR_NAMES))
        self.shape = torch.nn.Linear(dim, len(world.SHAPES))

    def loss(self, h, labels):
        """h [N, D]; labels [N, 3] (asked, colour, shape) -> (summed cross-entropy, accuracies)."""
        total, accs = 0.0, []
        for head, lab in zip((self.asked, self.colour, self.shape), labels.t()):
            out = head(h)
            total = total + F.cross_entropy(out, lab)
            accs.append(float((out.argmax(-1) == lab).float().mean()))
        return total, accs


def layer_with_probs(block, x, pos, past):
    """train.LlamaLayer.forward, also returning the attention probabilities [B, H, T, P+T]."""
    b, t, d = x.shape
    hd = d // block.heads
    h = block.attn_norm(x)
    q = block.attn_q(h).reshape(b, t, block.heads, hd).transpose(1, 2)
    k = block.attn_k(h).reshape(b, t, block.heads, hd).transpose(1, 2)
    v = block.attn_v(h).reshape(b, t, block.heads, hd).transpose(1, 2)
    q, k = train.rope_pairs(q, pos, block.base), train.rope_pairs(k, pos, block.base)
    k = torch.cat([past[0].expand(b, -1, -1, -1), k], dim=2)
    v = torch.cat([past[1].expand(b, -1, -1, -1), v], dim=2)
    p = k.shape[2] - t
    scores = (q @ k.transpose(-1, -2)) * hd**-0.5
    causal = torch.ones(t, p + t, dtype=torch.bool).tril(diagonal=p)
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    x = x + block.attn_output((probs @ v).transpose(1, 2).reshape(b, t, d))
    h = block.ffn_norm(x)
    return x + block.ffn_down(F.silu(block.ffn_gate(h)) * block.ffn_up(h)), probs


def lm_forward_with_probe(lm, x, start, past, layer):
    """LlamaLM.forward that also returns the hidden state after `layer` layers and the attention
    probabilities of layer ATTN_LAYER (0-based)."""
    pos = torch.arange(start, start + x.shape[1])
    mid = probs = None
    for i, block in enumerate(lm.layers):
        if i == ATTN_LAYER and ATTN_WEIGHT > 0:
            x, probs = layer_with_probs(block, x, pos, past[i])
        else:
            x, _ = block(x, pos, None if past is None else past[i])
        if i + 1 == layer:
            mid = x
    return x, mid, probs


def probe_labels(truth: dict, asked: str | None):
    if asked is None:
        return None
    return (WORDS.index(asked), world.COLOUR_NAMES.index(truth["colour"]), world.SHAPES.index(truth["shape"]))


def step_loss(lm, toks, img_tokens, examples, followups, probes=None, labels=None):
    """examples: [(question ids, answer ids)], followups: [None | (first q ids, first a ids)] where the
    scored turn comes after a first turn (its answer ids end with </s>). With `probes`, `labels` holds
    probe_labels() per example (None for other question types) -> (loss, probe accuracies or None)."""
    prefix_ids = toks["prefix"]
    prefix = lm.token_embd(torch.tensor(prefix_ids))[None]
    _, past = lm(prefix, 0)
    g = img_tokens.shape[1]
    seqs, targets_at, targets, weights = [], [], [], []
    for (q, a, vat), fu in zip(examples, followups):
        head = [] if fu is None else fu
        seq = head + q + a[:-1]
        start = g + len(head) + len(q) - 1
        seqs.append(seq)
        targets_at.append([start + j for j in range(len(a))])
        targets.append(a)
        weights += [VERDICT_WEIGHT if j == vat else 1.0 for j in range(len(a))]
    t = max(len(s) for s in seqs)
    ids = torch.tensor([s + [0] * (t - len(s)) for s in seqs])
    x = torch.cat([img_tokens, lm.token_embd(ids)], dim=1)
    h, mid, probs = lm_forward_with_probe(lm, x, len(prefix_ids), past, PROBE_LAYER)
    rows = torch.tensor([i for i, tl in enumerate(targets_at) for _ in tl])
    cols = torch.tensor([p for tl in targets_at for p in tl])
    logits = lm.logits(h[rows, cols])
    tgt = torch.tensor([tok for a in targets for tok in a])
    w = torch.tensor(weights)
    loss = (F.cross_entropy(logits, tgt, reduction="none") * w).sum() / w.sum()
    keep = [i for i, lab in enumerate(labels or []) if lab is not None and examples[i][2] >= 0]
    if probes is None or not keep:
        return loss, None
    rows = torch.tensor(keep)
    at = torch.tensor([targets_at[i][examples[i][2]] for i in keep])
    probe_loss, accs = probes.loss(mid[rows, at], torch.tensor([labels[i] for i in keep]))
    loss = loss + PROBE_WEIGHT * probe_loss
    if probs is not None:
        # Attention supervision: at the verdict position, head ATTN_HEAD looks at the asked word
        # (its last piece, just before "?" in every yes/no template).
        word_at = []
        for i in keep:
            q = examples[i][0]
            assert q[-6] == QUESTION_MARK, "yes/no question ids must end with '? ASSISTANT:'"
            word_at.append(len(prefix_ids) + g + len(followups[i] or []) + len(q) - 7)
        p = probs[rows, ATTN_HEAD, at, torch.tensor(word_at)]
        accs.append(float(p.mean()))
        loss = loss + ATTN_WEIGHT * -torch.log(p + 1e-6).mean()
    return loss, accs


def make_example(rng, truth, toks, turn_ids, yes_no, followup_p, qtype=None):
    qtype, question, asked = sample_question(rng, truth, qtype)
    answer = world.answer_for(qtype, truth, asked, yes_no)
    a = toks["answers"][answer]
    q = toks["questions"][question]
    fu = None
    if followup_p > 0 and rng.rand() < followup_p and truth["kind"] != "whole":
        qt1, q1, asked1 = sample_question(rng, truth)
        a1 = toks["answers"][world.answer_for(qt1, truth, asked1, yes_no)]
        # Turn 2 follows "</s>" as " USER: {q2} ASSISTANT:" (docs/reference.md section 3).
        fu = toks["questions"][q1] + a1 + [toks["eos"]]
        q = turn_ids[question]
    return (q, a + [toks["eos"]], verdict_index(a, answer)), fu, qtype, asked


def quick_eval(lm, toks, pieces, cache, truths, seed):
    """Accuracy per question type on cached held-out regions (one question of each type each)."""
    rng = np.random.RandomState(seed)
    items = []
    for r, truth in enumerate(truths):
        types = ["count"] if truth["kind"] == "whole" else [t for t in world.QUESTION_TYPES if t != "count"]
        for qt in types:
            _, question, asked = sample_question(rng, truth, qt)
            items.append((r, qt, question, asked))
    groups: dict[int, list] = {}
    for it in items:
        groups.setdefault(len(toks["questions"][it[2]]), []).append(it)
    right: dict[str, list[int]] = {}
    for group in groups.values():
        for s in range(0, len(group), 128):
            batch = group[s : s + 128]
            q_ids = [toks["questions"][it[2]] for it in batch]
            outs = train.greedy_answers(lm, toks, cache[[it[0] for it in batch]], q_ids)
            for (r, qt, _, asked), ids in zip(batch, outs):
                t = dict(truths[r], asked=asked)
                ok = world.check_answer(qt, train.decode(pieces, ids), t)
                right.setdefault(qt, [0, 0])
                right[qt][0] += int(ok)
                right[qt][1] += 1
    return {qt: round(100 * r / n, 1) for qt, (r, n) in sorted(right.items())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True, help="a train.py output folder (config.json, vision.pth, ...)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--scene-seed", type=int, default=1)
    ap.add_argument("--regions", type=int, default=4000)
    ap.add_argument("--eval-regions", type=int, default=300)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--yes-no", choices=["fact-first", "fact-verdict", "verdict-first"], default="fact-first")
    ap.add_argument("--verdict-weight", type=float, default=3.0, help="loss weight of the yes/no token")
    ap.add_argument("--yes-no-share", type=float, default=1.5, help="sampling weight of each yes/no type")
    ap.add_argument("--eval-prior", action="store_true", help="asked words drawn as the evaluation draws them")
    ap.add_argument("--followup", type=float, default=0.0, help="share of examples scored as a second turn")
    ap.add_argument("--probe-weight", type=float, default=0.0, help="loss weight of the scaffolding probes")
    ap.add_argument("--probe-layer", type=int, default=2, help="probes read the state after this many layers")
    ap.add_argument("--attn-weight", type=float, default=0.0, help="loss weight of the attention supervision")
    ap.add_argument("--attn-layer", type=int, default=1, help="0-based layer of the supervised head")
    ap.add_argument("--attn-head", type=int, default=3)
    ap.add_argument("--count-regions", type=int, default=0, help="size of an extra pool of whole-image regions")
    ap.add_argument("--count-share", type=float, default=0.0, help="share of examples drawn from that pool")
    ap.add_argument("--freeze", default="", help="comma-separated LM parameter prefixes to keep, e.g. token_embd,layers.0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--max-minutes", type=float, default=0)
    ap.add_argument("--cache-only", action="store_true", help="build the region cache and stop")
    ap.add_argument("--cache", default="", help="the region cache file (default: in --out)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    global VERDICT_WEIGHT, EVAL_PRIOR, PROBE_LAYER, PROBE_WEIGHT
    VERDICT_WEIGHT = args.verdict_weight
    EVAL_PRIOR = args.eval_prior
    PROBE_LAYER, PROBE_WEIGHT = args.probe_layer, args.probe_weight
    global ATTN_LAYER, ATTN_HEAD, ATTN_WEIGHT
    ATTN_LAYER, ATTN_HEAD, ATTN_WEIGHT = args.attn_layer, args.attn_head, args.attn_weight
    WEIGHTS["is_shape"] = WEIGHTS["is_colour"] = args.yes_no_share
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, "finetune.log"), "a")

    def say(msg):
        line = f"[{time.time() - t0:7.1f}s] {msg}"
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    c, vision, projector, lm = train.load_trained(args.src)
    c = dict(c, finetune_cached={k: v for k, v in vars(args).items() if k not in ("src", "out", "threads")})
    toks = train.load_tokens()
    pieces = train.load_pieces()
    # Second-turn question ids: " USER: {q} ASSISTANT:" after </s>; tokenised by tokenize.ts as
    # "turns" when present, else approximated by the first-turn ids (no follow-up training then).
    turn_ids = toks.get("turns", {})
    if args.followup > 0 and not turn_ids:
        sys.exit("tokens.json has no second-turn question ids: rerun tools/shapes/tokenize.ts")
    cache_path = args.cache or os.path.join(args.out, f"cache-{args.seed}-{args.regions}.pt")
    if os.path.exists(cache_path):
        cache, truths, ev_cache, ev_truths = torch.load(cache_path)
    else:
        cache, truths = build_cache(vision, projector, c, args.seed, args.scene_seed, 30_000_000, args.regions, args.threads)
        ev_cache, ev_truths = build_cache(vision, projector, c, args.seed + 1, 5000, 0, args.eval_regions, args.threads)
        torch.save((cache, truths, ev_cache, ev_truths), cache_path)
    say(f"cache: {len(truths)} training regions, {len(ev_truths)} held-out regions (scene seed 5000)")
    # Optional pool of whole-image regions for counting (the main pool has few: counting needs many
    # scenes, not many questions), with its own held-out set (scene seed 6000) large enough to measure.
    count_cache = count_truths = count_ev = count_ev_truths = None
    if args.count_regions > 0:
        count_path = os.path.join(os.path.dirname(cache_path), f"count-{args.seed}-{args.count_regions}.pt")
        if os.path.exists(count_path):
            count_cache, count_truths, count_ev, count_ev_truths = torch.load(count_path)
        else:
            count_cache, count_truths = build_cache(vision, projector, c, args.seed + 2, args.scene_seed, 31_000_000, args.count_regions, args.threads, 1.0)  # fmt: skip
            count_ev, count_ev_truths = build_cache(vision, projector, c, args.seed + 3, 6000, 0, 300, args.threads, 1.0)
            torch.save((count_cache, count_truths, count_ev, count_ev_truths), count_path)
        say(f"count pool: {len(count_truths)} whole-image regions, {len(count_ev_truths)} held-out (scene seed 6000)")

    def held_out():
        result = quick_eval(lm, toks, pieces, ev_cache, ev_truths, 99)
        if count_ev is not None:
            result["count_pool"] = quick_eval(lm, toks, pieces, count_ev, count_ev_truths, 98)["count"]
        return result

    if args.cache_only:
        return
    lm.train()
    for p in list(vision.parameters()) + list(projector.parameters()):
        p.requires_grad_(False)
    # --freeze: LM parameters kept as they are (name prefixes). Counting lives mostly in layer 0's
    # heads (zeroing any of them costs 17-87 points), and it is what a yes/no fine-tune erodes first.
    frozen = [f for f in args.freeze.split(",") if f]
    for name, p in lm.named_parameters():
        if any(name == f or name.startswith(f + ".") for f in frozen):
            p.requires_grad_(False)
    probes = Probes(c["lm_dim"]) if PROBE_WEIGHT > 0 else None  # created after the seed: reproducible
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params + (list(probes.parameters()) if probes else []), weight_decay=0.0)
    if args.eval_every <= args.steps:
        say(f"before: {held_out()}")
    rng = np.random.RandomState(args.seed)
    for step in range(args.steps):
        picks = rng.randint(len(truths), size=args.batch)
        examples, followups, labels, images = [], [], [], []
        for r in picks:
            if count_cache is not None and rng.rand() < args.count_share:
                k = rng.randint(len(count_truths))
                truth, image = count_truths[k], count_cache[k]
            else:
                truth, image = truths[r], cache[r]
            ex, fu, _, asked = make_example(rng, truth, toks, turn_ids, args.yes_no, args.followup)
            examples.append(ex)
            followups.append(fu)
            labels.append(probe_labels(truth, asked))
            images.append(image)
        for g in opt.param_groups:
            g["lr"] = train.cosine_lr(step, args.steps, args.lr, warmup=args.warmup)
        loss, accs = step_loss(lm, toks, torch.stack(images), examples, followups, probes, labels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 10 == 0:
            probe = "" if accs is None else " probes (asked, colour, shape, attn) " + " ".join(f"{a:.2f}" for a in accs)
            say(f"step {step} loss {loss.item():.4f}{probe}")
        last = step == args.steps - 1 or (args.max_minutes and time.time() - t0 > 60 * args.max_minutes)
        if (step + 1) % args.eval_every == 0 or last:
            say(f"step {step} held-out: {held_out()}")
            train.save(c, vision, projector, lm, args.out)
        if last:
            break
    say(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
