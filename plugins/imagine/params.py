"""/params: the full settings of a finished /imagine picture and its lineage back to the first
prompt (light). Every final reply has a Params button that runs it."""

from __future__ import annotations

from typing import Annotated, Any

from bot.commands import Reply, command
from bot.markup import bold, code, escape
from engine.errors import UserError
from plugins.imagine.plan import ImagineResult


def finished_result(record: Any) -> ImagineResult | None:
    """A job record's /imagine result, or None (another task's job, not finished, expired)."""
    from plugins.imagine import TASK

    raw = record.result if record is not None and record.task == TASK else None
    if not isinstance(raw, dict) or not raw.get("state"):
        return None
    return ImagineResult.from_json(raw)


@command
async def params(ctx, job: Annotated[str, "the /imagine job (its Params button fills this in)"]) -> Reply:
    """The full settings of an /imagine picture (seed, model, drawer...) and the jobs it was made from."""
    result = finished_result(await ctx.run_blocking(ctx.engine.job, job.strip()))
    if result is None:
        raise UserError("I can't find that finished /imagine job (it may have expired).")
    settings = {"prompt": result.prompt, "seed": result.seed, "steps": result.steps, "every": result.every,
                "size": result.size, "drawer": result.drawer, "cutouts": result.cutouts, "preset": result.quality,
                "model": result.model, "clip": result.clip}
    lines = [bold(f"Params of job {result.job_id}"),
             " · ".join(f"{name} {code(str(value))}" for name, value in settings.items() if name != "prompt"),
             f"prompt: {escape(result.prompt)}"]
    pictures = [{"source": p.source, "weight": p.weight} for p in result.image_prompts]
    if pictures:  # a /blend's image prompts
        lines.append("pictures: " + ", ".join(f"{escape(p['source'] or 'a picture')} ({p['weight']:g})"
                                              for p in pictures))
    chain = [a.to_json() for a in result.lineage]
    if chain:
        lines.append(bold("Made from, newest first:"))
        here = result.mode
        for ancestor in reversed(chain):
            lines.append(f"- {escape(here)} of {code(ancestor['job'])}: {escape(ancestor['prompt'])} "
                         f"(seed {ancestor['seed']}, {ancestor['steps']} steps, {ancestor['size']}, "
                         f"{ancestor['drawer']})")
            here = ancestor["mode"] or "first prompt"
    data = {"job": result.job_id, "parent": result.parent or None, "mode": result.mode or None, **settings,
            "lineage": chain, **({"pictures": pictures} if pictures else {})}
    return Reply(text="\n".join(lines), ephemeral=True, data=data)
