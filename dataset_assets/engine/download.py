"""Whole-list downloads: shard the input like img2dataset and run every missing shard."""

from __future__ import annotations

from dataset_assets.engine.consent.blocklist import load_blocklist
from dataset_assets.engine.options import DownloadOptions
from dataset_assets.engine.reader import count_rows, iter_input_shards
from dataset_assets.engine.runner import DownloadPool, already_done, read_shard_stats
from dataset_assets.engine.shards.sample_counts import publish_sample_counts
from dataset_assets.engine.stats import ShardStats
from dataset_assets.io.storage import OutputFolder


def for_url_list(options: DownloadOptions) -> DownloadOptions:
    """The options a URL list of ``options.input_format`` can honour.

    A txt list holds only URLs: img2dataset ignores ``caption_col`` and
    ``save_additional_columns`` for it, so its command lines name them; failing on "caption not
    found" would break them. Shards handed over as tables (the Dagster path) keep their columns.
    """
    if options.input_format.partition(".")[0] != "txt":
        return options
    return options.replace(caption_col=None, save_additional_columns=())


def download(
    url_list: str, output_folder: str, options: DownloadOptions, *, progress: bool = False
) -> list[ShardStats]:
    """Download every shard of ``url_list`` not yet complete in ``output_folder``.

    Shard ids are positional (files in sorted order, ``number_sample_per_shard`` rows each,
    never spanning files), so re-running the same command resumes where it stopped.
    """
    options = for_url_list(options)
    # Read before anything is touched: a missing list stops the run with nothing changed.
    blocklist = load_blocklist(options.url_blocklist) if options.url_blocklist else None
    output = OutputFolder(output_folder)
    if options.incremental_mode == "overwrite":
        output.fs.rm(output.root, recursive=True)
        output = OutputFolder(output_folder)
    output.clean_tmp()

    already_complete: list[int] = []

    def complete(shard_id: int) -> bool:
        done = already_done(output, shard_id, options)
        if done:
            already_complete.append(shard_id)
        return done

    results: list[ShardStats] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=count_rows(url_list, options), unit="img", smoothing=0.05)
    try:
        with DownloadPool(options, output, blocklist) as pool:
            shards = iter_input_shards(url_list, options, skip=complete)
            for stats in pool.run(shards, on_progress=bar.update if bar is not None else None):
                results.append(stats)
        # Shards skipped by the reader never reached the pool; report them too.
        results += [read_shard_stats(output, shard_id, options) for shard_id in already_complete]
        publish_sample_counts(output, options)  # once per run, from the stats files
    finally:
        if bar is not None:
            bar.close()
        # Every writer of this run has committed or aborted by now.
        output.remove_empty_tmp()
    return sorted(results, key=lambda s: s.shard_id)
