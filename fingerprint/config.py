"""Every tunable of the fingerprint, in one place, with its physical meaning.

The analysis runs at ``sr = 8000`` Hz with ``n_fft = 1024`` (128 ms window) and
``hop_length = 128`` (16 ms per frame, 62.5 frames/s).  Peaks are picked on a
log-frequency spectrogram with ``bins_per_semitone = 3`` between ``fmin_hz = 100`` and
``fmax_hz = 3900`` (63.4 semitones), so that a pitch shift is a translation of the peak
constellation along the frequency axis and a speed/tempo change is a scaling of its time
axis.  That is what lets the matcher search speed/pitch hypotheses by transforming peak
*coordinates* of the query, without re-analysing audio (see :mod:`earmark.match`).

Two presets exist because the two sides want different densities: the catalogue side is
sparse (index size is paid per catalogue hour), the query side is dense so that the
catalogue's landmarks are (mostly) a subset of the query's.  The query side's density
matters most when other audio is mixed over the recording: the other audio's peaks take
places in the density budget, and the recording's peaks must still be picked.  Its
fan-out is set with it, so that a query anchor still pairs with the peaks of the next
~0.5 s (``fan_out / peaks_per_second``): more peaks with the same fan-out pair only over
a shorter span and find fewer of the catalogue's pairs.  Measured on the dev corpus
(``fp bench`` queries, one thread): 20/s with fan-out 10 -> 35/s with fan-out 18 found
48 -> 53 of 60 excerpts mixed with other music at 0 dB, 35 -> 42 of 60 5-s excerpts
inside 30 s of other music, 53 -> 55 and 46 -> 52 at 0 dB white and pink noise, with
no false positive on 220 negatives, for ~40 % more time per query; 40/s with fan-out 10
lost hits (48 -> 38 on 3-s noisy excerpts), 40/20 gained one more mix for 55 % more time.

>>> from earmark.fingerprint.config import PRESETS
>>> cfg = PRESETS["default"]
>>> round(cfg.frame_seconds * 1000)          # ms per frame
16
>>> round(cfg.max_pair_frames * cfg.frame_seconds, 3)  # pairing window, seconds
1.056
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class PeakConfig:
    """How peaks are picked (one side: catalogue or query).

    Attributes
    ----------
    peaks_per_second : float
        Target density: a peak is kept only if it is among the ``peaks_per_second *
        density_window_seconds`` most prominent peaks in a window of
        ``density_window_seconds`` centred on it (translation-invariant, unlike blocks).
    density_window_seconds : float
        Width of that window.
    neighbourhood_frames : int
        A peak is the maximum over +-``neighbourhood_frames`` frames (8 x 16 ms = +-128 ms)...
    neighbourhood_semitones : float
        ...and +-``neighbourhood_semitones`` along log-frequency.
    prominence_window_frames : int
        Prominence is the peak's dB level minus the mean level over +-this many frames
        (same bin), which makes the picker level-independent.
    min_prominence_db : float
        Peaks less prominent than this are never kept (silence, flat noise).
    fan_out : int
        Each anchor peak is paired with up to this many following peaks in the target zone.
    """

    peaks_per_second: float
    density_window_seconds: float = 1.0
    neighbourhood_frames: int = 6
    neighbourhood_semitones: float = 2.0
    prominence_window_frames: int = 31
    min_prominence_db: float = 3.0
    fan_out: int = 3


@dataclass(frozen=True)
class FingerprintConfig:
    """Analysis front end and landmark target zone (shared by catalogue and query).

    Attributes
    ----------
    sr : int
        Analysis sample rate, Hz.  8 kHz keeps 100-3900 Hz, where melodic peaks live and
        which survives telephone-band and low-bitrate codecs.
    n_fft : int
        FFT size, samples (1024 / 8000 Hz = 128 ms window).
    hop_length : int
        Hop, samples (128 / 8000 Hz = 16 ms per frame).
    fmin_hz, fmax_hz : float
        Frequency range of the log-frequency spectrogram.
    bins_per_semitone : int
        Log-frequency resolution (3 -> one bin per 33 cents).
    min_pair_frames, max_pair_frames : int
        Target zone in time: a target follows its anchor by 3..66 frames (48 ms..1.06 s).
    max_pair_semitones : float
        Target zone in frequency: |f_target - f_anchor| <= 21 semitones.
    index, query : PeakConfig
        Peak density and fan-out on the catalogue side and the query side.
    """

    sr: int = 8000
    n_fft: int = 1024
    hop_length: int = 128
    fmin_hz: float = 100.0
    fmax_hz: float = 3900.0
    bins_per_semitone: int = 3
    min_pair_frames: int = 3
    max_pair_frames: int = 66
    max_pair_semitones: float = 21.0
    index: PeakConfig = PeakConfig(peaks_per_second=9.0, fan_out=3)
    query: PeakConfig = PeakConfig(peaks_per_second=35.0, fan_out=18)

    @property
    def frame_seconds(self) -> float:
        """Seconds per spectrogram frame (hop_length / sr)."""
        return self.hop_length / self.sr

    @property
    def n_log_bins(self) -> int:
        """Number of log-frequency bins between fmin_hz and fmax_hz."""
        import math

        return int(math.floor(12 * math.log2(self.fmax_hz / self.fmin_hz) * self.bins_per_semitone)) + 1

    def with_(self, **changes) -> "FingerprintConfig":
        """Copy with some fields changed (``cfg.with_(sr=11025)``)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class MatchConfig:
    """How the matcher searches transform hypotheses and decides what is a match.

    Attributes
    ----------
    min_speed, max_speed : float
        Range of time-scale factors searched (reference seconds per query second):
        0.65-1.55 covers "slowed" and "sped up" edits and services claiming 50-150 %.
    speed_step : float
        Relative spacing of the time-scale grid (1.5 %: the worst error, 0.75 %, moves a
        1-s landmark pair by < 0.5 frame, which the query-side multi-probe absorbs).
    max_pitch_semitones : float
        Range of pitch-only shifts searched (+-7 semitones).
    pitch_step_semitones : float
        Spacing of the pitch grid (0.5 semitone: worst error 0.25 semitone = 0.5 f1 bin).
    search_speed, search_tempo, search_pitch : bool
        Which hypothesis families to search: speed (time and pitch together, as
        resampling does), tempo only, pitch only.  All off (and ``search_tempo_key``)
        = plain landmark matching (``--fast``).
    search_tempo_key : bool
        Also search tempo and key changed together, independently: a sample fitted to
        a new song's beat and key (e.g. tempo +6 % and key -2 semitones), which lies on
        none of the three lines.  Without it, 10-s bench excerpts at tempo 1.06 / key -2,
        0.93 / +2 and 1.1 / +3 were found 9, 5 and 2 times of 30; with it, 30 of 30.
    tempo_key_max_change, tempo_key_max_semitones : float
        The region of that plane searched: tempo within +-10 % (beat matching; a DJ
        pitch fader spans +-8 %) and key within +-3 semitones, on the grid of
        ``speed_step`` x ``pitch_step_semitones`` (132 hypotheses more, ~1.9x the coarse
        stage's look-ups).  Larger changes of both at once cost area: the look-ups grow
        with the product of the two ranges.
    wide_tempo_key_max_semitones, wide_refine_hypotheses, wide_min_significance : float, int, float
        Where the second coarse round (below) runs and still nothing matches, the ring
        of the tempo-and-key plane beyond ``tempo_key_max_semitones``, out to key +-6
        semitones (144 hypotheses more; with tempo within ``tempo_key_max_change``, any
        key a producer reaches by the shorter way round), is voted with the first round's
        coarse landmarks, and its ``wide_refine_hypotheses`` strongest transforms with
        every landmark.  Its evidence must reach ``wide_min_significance`` on its
        landmarks alone (no audio check): songs of one style are near-copies under more
        transforms the wider the plane, and songs of the tests' synthetic generator that
        are not in the catalogue reached 25 and 28.5 there (2 of 20 60-s songs; one of
        them through the audio check at correlation 0.81 before the check was left out),
        while the ring's hits on real 10-s excerpts reach 35 or more.  Measured on the dev
        corpus: ``tempokey_-10_+5`` (extended set) 0 -> 57 of 60; 30 clean 10-s excerpts
        at tempo 1.06 / key -4.5, 0.92 / +6, 1.1 / -6 and 0.95 / +4: 3, 0, 0, 12 -> 29, 29,
        25, 29 (with the contrast on refined evidence, :func:`earmark.match._set_contrasts`);
        no bench query lost (significance counts the first two rounds' hypotheses: counting
        the ring's too cost a borderline ``pv_pitch_-3`` query); no negative matched.  Cost:
        it runs on queries nothing explains (negatives, most of a scan): +5-8 % CPU on the
        bench's negatives, +3 % on the scan bench's files.  Setting
        ``wide_tempo_key_max_semitones`` to ``tempo_key_max_semitones`` disables it.
    offset_bin_frames : int
        Width of offset-vote bins (4 x 16 ms = 64 ms); neighbouring bins are summed, so
        the alignment may drift by +-1 bin over the matched segment.
    probe_margin : float
        Query-side multi-probe: a quantised coordinate within this fraction of a bin of
        the bin edge is also looked up in the neighbouring bin.
    min_score : int
        Minimum number of aligned landmarks for a match.
    min_significance : float
        Minimum ``-log10`` chance probability for a match (see :mod:`earmark.match`).
    max_matches : int
        Most matches reported per query.
    verify_audio : bool
        Audio verification (:mod:`earmark.verify`; off in the ``fast`` preset).
    verify_min_significance, verify_min_correlation : float
        With ``verify_audio``, a candidate at least
        ``verify_min_significance`` significant but under ``min_significance`` (and with
        the contrast and score a match needs) is checked against its catalogue file, and
        reported if the aligned spectrograms correlate at least ``verify_min_correlation``
        (its ``verified`` field).  The landmark evidence of a phase-vocoded recording
        (librosa's pitch shift) falls under the threshold while the audio still
        correlates 0.80-0.92; 198 chance alignments on the bench's queries correlate 0.60
        at most.  0.8 keeps a margin of 0.2 over them.  The tests' synthetic generator
        makes near-copies of itself once tempo and key match (songs not in the catalogue
        correlate up to 0.81 with one that is): 0.7 let 4 of 20 such 20-s songs through,
        0.8 none, and the gate of 10 (the refinement pre-filter's level, where chance
        alignments on the bench negatives peak at 10.3) keeps the one at significance 8
        out.  ``fp bench`` (same machine, against the run before): ``pv_pitch_-3`` 63 -> 82 %,
        ``pv_tempo_-15`` 92 -> 95 %, one query more on ``clean_2s``, ``speed_0.7``,
        ``tempo_-20`` and ``tempokey_+6_-2``, no row lost one, no false positive on 220
        negatives; p95 of all queries 26 -> 29 ms (a check decodes a few seconds of the
        catalogue file, ~0.2 s; 40 candidates over the bench's 2 740 queries).
    verify_min_peaks_z : float
        The other way a checked candidate passes: the recording's spectral peaks are in
        the query at the alignment this many standard deviations more often than at
        other alignments of the same two signals (:mod:`earmark.verify`).  It sees a
        recording under a 0 dB mix, where the correlation does not: true alignments
        under the threshold on the bench's mix, noise and excerpt rows reach 7-27;
        chance alignments on the negatives 4.0 at most, tracks of one game against each
        other under the threshold 2.9, the synthetic generator's near-copies 8.6 (table
        in :mod:`earmark.verify`).  ``fp bench`` against the run before (same session):
        ``mix_0db`` 88.3 -> 91.7 %, ``embed_5s_in_30s`` 70 -> 75 %, ``noise_white_5db_3s``
        87 -> 92 %, ``pv_pitch_-3`` 82 -> 83 %, no false positive on 220 negatives.
    verify_min_coherence_z : float
        The third way a checked candidate at identity (speed 1, pitch 0) passes: the
        query keeps the phase of the catalogue file's waveform at the alignment, this
        many standard deviations more consistently than at other alignments of the same
        two signals (:func:`earmark.verify.phase_coherence_per_lag`).  A recording used
        as it is under other music or noise keeps its phase wherever it is the louder:
        on the bench's 5-s excerpts under other music at 0 dB the true alignments reach
        15-249 over the whole 5 s (median 93; 31-150 for the 13 the peak test missed,
        where it reached 0.4-14); unrelated music against random places of the dev
        catalogue (2 917 pairs) 4.4 at most, the chance candidates checked on the bench
        negatives 4.0.
    verify_min_coherence : float
        And the coherence itself must reach this: the recording's waveform holds in a
        share of the segment's time-frequency cells, not in a few hits.  Over a long
        segment a faint coherence stands out of chance too: tracks of one game share
        faint audio at 0.07-0.15 (``coherence_z`` 12-29), while a recording under other
        music at 0 dB holds 0.17 or more (median 0.58 over the bench's 60 5-s
        excerpts).  Tracks of one game that pass (half of the dev
        catalogue against the other half: 35 -> 39 alignments, at 0.21-0.36 and
        ``coherence_z`` 22-73) share stems, whole passages of one recording.
    coherence_min_fraction : float
        Candidates at identity are checked by the coherence test alone from this
        fraction of ``min_significance`` (0.05: 1 of 20) and ``coherence_min_score``
        landmarks: after the candidates of the other tests, at most four more refined
        (:data:`earmark.match.COHERENCE_MAX_REFINE`) and three checked
        (:data:`earmark.verify.COHERENCE_MAX_CHECKS`) per query, and only in a query
        where nothing is significant.  The coherence is computed first, the other tests
        only for a candidate that passes it.
    coherence_min_score : int
        Fewest aligned landmarks of such a candidate (its offset cell still needs
        ``verify_min_score`` votes to be refined at all): on refinement a 5-s excerpt
        under music at 0 dB can keep 5-6 landmarks on its fitted line, under the other
        tests' floor, while its waveform stands out by far (``coherence_z`` 50).  A
        candidate under ``verify_min_score`` is checked by the coherence test alone.
        ``fp bench``: ``embed_5s_in_30s``, ``noise_white_0db`` and ``noise_pink_0db`` one
        query more each, no query lost, no negative matched.
    review_max_significance : float
        With ``verify_audio``, a match with a speed or pitch change that its landmarks
        alone make significant, but under this, is compared with its catalogue file
        before it is reported, and dropped where the audio refutes it (both
        ``refute_max_correlation`` and ``refute_max_peaks_z``); the search then goes on as
        if it had not been found (a later round may find the recording the query does
        use).  0 disables.  The chance model counts landmarks as independent, and music
        is burstier: a repeated figure at a matching tempo aligns many landmarks of two
        different recordings.  On the dev corpus (session 27) a 10-s excerpt at tempo
        0.9 and key +5 matched another recording at speed 0.897, key -1.48 (32
        landmarks, significance 35), and an 8-s excerpt at key -2 in 90 s of other
        music matched another recording at key -1.89 (significance 58); their audio
        correlates 0.24 there (peaks 2.7 and 3.0 standard deviations over chance), where
        the 199 transformed matches of both bench runs (default and extended sets) under
        significance 60 correlate 0.47 or more.  A check reads up to 14 s of the
        catalogue file and compares (~50 ms); at 80 the game bench's queries cost +9 %
        CPU in the mean and +1.5 % at the median (its transformed queries with weaker
        evidence), the scan bench's files nothing measurable; chance alignments on
        negatives stay under 11.
    refute_max_correlation, refute_max_peaks_z : float
        The audio refutes a reviewed match when the aligned spectrograms correlate under
        ``refute_max_correlation`` and the recording's peaks stand under
        ``refute_max_peaks_z`` standard deviations over chance
        (:func:`earmark.verify.refutes`).  Both must fail: a recording under loud other
        music keeps its peaks while the correlation falls (0.47 at 14.8), and a
        phase-vocoded one keeps its spectrum while the peaks move (0.58 at 3.5).
    verify_peaks_min_fraction, verify_min_score : float, int
        The peak test also checks candidates under a match's landmark floor: from this
        fraction of ``min_significance`` (0.3: 6 of 20) and this many aligned landmarks
        (7 of 10); the correlation test keeps ``verify_min_significance`` and
        ``min_score``.  A 5-s excerpt under equally loud music often leaves 7-9 landmarks
        at the right place.  Such candidates are refined only in a query where nothing is
        significant, at most four (:data:`earmark.match.VERIFY_MAX_REFINE`; on every query
        they cost a clean 10-s query ~25 % more time).  Their peaks, calibrated with
        the other candidates: chance alignments on the 220 negatives at score >= 6 stand
        4.0 out at most, the synthetic near-copies 8.6.  ``fp bench`` against the run
        before: ``embed_5s_in_30s`` 75 -> 78.3 %, ``pv_pitch_-3`` 83 -> 90 %,
        ``noise_white_5db`` and ``noise_white_0db`` one query more each, no row lost one,
        no false positive on 220 negatives; the 20 non-catalogue synthetic songs flagged as
        before (3 and 8 of 20 at 20 and 60 s, none by the peak test).  Game tracks against
        47 others of the same games: one more alignment (score 8, 14 s at identity, 55 %
        of the recording's peaks found, correlation 0.43), in the range of the stems
        those tracks share.
    audio_edges : bool
        Read the inner edges of each recording match's segment off the audio
        (:func:`earmark.verify.use_edges`; off in the ``fast`` preset): where along the
        match's alignment the recording's spectral peaks stop being found in the query.
        The landmarks are a sample of the use, and under a loud mix the first one can
        come a second after it begins.  On the bench's 5-s excerpts hidden in 30 s of
        other music: start within 0.5 s for 40 -> 44 of 45 hits; 27 ms a match (p50),
        reading a few seconds of the catalogue file.
    inlier_seconds : float
        Final alignment tolerance: a landmark pair is evidence if it lies within this
        many seconds of the fitted query->reference line.
    max_gap_seconds : float
        Evidence is the densest run of aligned landmarks with no gap longer than this;
        a match's segment is that run.
    min_contrast : float
        A match's vote count must be at least this many times the background of the
        same query: what the strongest *other* recordings reach (see
        :func:`earmark.match.track_contrast`).  Rejects coincidences between recordings
        of one style, which every recording of that style shares.
    shadow_ratio : float
        A match of another recording over mostly the same query segment as a stronger
        match must reach this fraction of its score (else it is a coincidence riding on
        audio that is already explained).
    derivation : bool
        Also search the derivation tier (re-performed / regenerated compositions,
        :mod:`earmark.index.derivation`); its matches have ``kind="derivation"``.
    coarse_peaks_per_second, coarse_fan_out : float, int
        Coarse-to-fine search.  The whole hypothesis grid is first voted with the
        query's strongest peaks only: those ranked under this density (9 per second,
        the catalogue side's) paired with this fan-out, about 27 landmarks per second
        instead of the query's ~600.  These are the landmarks most likely to be in the
        index at all, so a real transform still stands out, at about 1/7 of the cost.
    refine_hypotheses : int
        Hypotheses (besides identity) whose coarse vote is strongest are then voted
        again with every query landmark; candidates come from these only.  0 = no
        coarse stage (every hypothesis with every landmark).  4: a real transform and
        its grid neighbours lead the coarse vote; measured on the dev corpus, 4 lost no
        hit against 8 and cut a clean 10-s query by ~20 %.
    dense_coarse_peaks_per_second, dense_refine_hypotheses : float, int
        The second coarse round (:func:`earmark.match.search`), for a query the first round
        leaves mostly unexplained: the speed, tempo and pitch lines are voted again with the
        query's peaks thinned to this density (18 per second, twice the first round's: a
        recording under other music as loud holds about half of the query's strongest peaks)
        paired with ``coarse_fan_out``, and the ``dense_refine_hypotheses`` strongest
        transforms not voted yet are voted with every landmark. A transformed use under
        other music can leave its transform without a single coarse cell (under
        ``coarse_min_score`` votes) while every landmark finds it (score 30-65, significance
        68-156). Measured on 42 8-s catalogue excerpts at tempo, pitch or speed changes
        inside 90 s of other music at 0 and 6 dB (dev corpus): 27 -> 34 found (36
        transformed: 21 -> 28), 12 and 14 per second 33 and 32; ``fp bench``
        ``embed_tempo_+10_6db``: game soundtracks 36 -> 43 of 60, electronic catalogue 29 ->
        31 of 40; no bench query lost, no negative matched. Cost: it runs on negatives and
        on long files with a short use; +20 % CPU on those 90-s queries, +14 % on the scan
        bench's 40 files, +6 % mean CPU on the game bench's queries (p50 17.01 against 17.29
        ms without: its lines are two jobs, one per voting thread), +10 % on the electronic
        catalogue's (a third of them negatives or 30-s queries). The tempo-and-key plane is
        not voted again (it would double that). 0 disables.
    dense_coarse_max_explained : float
        The second round runs while the segments of the matches found (significance
        ``min_significance`` or more) cover less than this share of the query.
    coarse_probe_margin : float
        ``probe_margin`` of the coarse vote.  The coarse stage only ranks hypotheses (the
        fine vote, with ``probe_margin``, collects the evidence), and a real transform
        leads it with or without its neighbouring bins: on all 2 500 bench queries 0.1
        and 0.0 gave the same answers as 0.2, and 0.1 took a clean 10-s query from
        13.9 to 10.7 ms (0.0: 9.8 ms; 0.1 keeps half the margin for off-grid transforms
        the bench does not hold).
    coarse_min_score : int
        Cells under this coarse vote count do not make a hypothesis a contender.
    coarse_min_significance : float
        Nor do transforms whose best coarse cell has a chance significance (the model
        of :mod:`earmark.match`) under this: a query that uses nothing transformed -
        most queries - then votes identity alone with all its landmarks.  5 is a
        quarter of ``min_significance``, as the coarse set is ~1/7 of the landmarks; on
        the dev corpus no transformed hit needed less (10 lost none either).
    stop_key_ratio, stop_key_min_postings : float, int
        In the votes, a key holding more than ``stop_key_ratio`` times the mean postings
        per key (and more than ``stop_key_min_postings``) is a stop key and is skipped:
        a few very common keys are most of the postings a query visits, nearly all of
        them chance (:func:`earmark.match.vote_hypotheses`).  ``inf`` disables.  The
        evidence of a candidate (:func:`earmark.match.collect_pairs`) uses every key, so
        this only decides which alignments become candidates.  4 (it was 32): on indexes
        of 5 000 and 20 000 tracks (``fp bench scale``'s growth of the dev index: 4-5 % of
        the keys, a third of the postings, are then stop keys) the top match was the same
        on every bench query tried - at 5 000 tracks 540 (180 of them with both presets),
        at 20 000 tracks 90 with both presets: noise and another song at 0 dB, a 5-s
        excerpt in 30 s, 2-3 s excerpts, speed, tempo, pitch, codecs, Griffin-Lim - and
        no negative matched (211 and 80), while a single-threaded query took 0.67-0.78x
        the time with the default search and 0.36-0.53x with ``--fast``.  Indexes under
        ~16 postings per key (about 2 500 tracks) are unaffected: ``stop_key_min_postings``
        is the floor.
    coarse_stop_key_ratio : float
        ``stop_key_ratio`` of the coarse vote.  The coarse stage only ranks transforms
        (identity and the refined transforms are voted with ``stop_key_ratio``, and the
        evidence uses every key), and a real transform leads it on its rarer keys too.
        On a 5 000-track index (``fp bench scale``: the 81 dev tracks and synthetic
        postings with their key statistics) 2 instead of 32 (then also the other votes'
        ratio) took the default search of a
        10-s query from 165 to 101 ms single-threaded, with the same top match on 390
        bench queries of 13 transformed rows and no match on 211 negatives.  Small indexes
        are unaffected: the limit never falls below ``stop_key_min_postings``, which the dev
        index (under one posting per key) never reaches.
    mix_peaks_per_second, mix_fan_out : float, int
        The *mix look* (``verify_audio`` only; 0 peaks = off): when no match reaches
        the landmarks' threshold (none, or only matches resting on an audio check), a
        recording used as it is under other music as loud may still be there.  At 0 dB
        the added music is louder in most of the recording's peak neighbourhoods
        (+-6 frames x +-2 semitones), so 8-22 % of the catalogue side's peaks are still
        query peaks and a landmark, which needs two, survives 0-5 times in 5 s: too few to
        be a candidate (measured on the bench's five missed 5-s excerpts in 30 s of other
        music).  The query is then analysed again with small neighbourhoods
        (``mix_neighbourhood_*``) at this density and fan-out: 12-41 % of those peaks
        found, the true alignment 9-10 landmarks in three of the five.  These landmarks
        are voted at identity only, window by window (``mix_window_seconds``), and their
        strongest alignments go to the coherence test alone (the waveform, which such
        a use keeps: ``coherence_z`` 44-106 at the five true alignments); no landmark
        count of the mix look makes a match.  (Whole-query identity votes of those
        five: at 60 / 20 the three true alignments ranked 1st, 4th and 8th; at 60 / 30,
        1st, 3rd and 4th for 1.5x the landmarks; at 100 / 30, 6th, 30th and 114th.)
    mix_neighbourhood_frames, mix_neighbourhood_semitones : int, float
        Peak neighbourhood of the mix look (+-2 frames = +-32 ms, +-2 bins).
    mix_window_seconds : float
        The mix look counts an alignment's landmarks in windows of this length, two
        neighbouring windows together (a 5-s use stands out of the chance votes of 5 s,
        not of the whole query's).
    mix_min_fraction : float
        A mix-look alignment is checked on the audio from this fraction of
        ``min_significance`` (0.2: 4 of 20; significance of :mod:`earmark.match`, over
        the alignment's two windows and one either side), the two most significant
        (:data:`earmark.match.MIX_MAX_CHECKS`; more of one recording after a near
        miss of its waveform).  Measured on the bench's
        queries: the 220 negatives' strongest chance alignments reach 13.2, 4 or more on
        42 of them (2.3 median); the true alignments of the 60 5-s excerpts in 30 s of
        other music, 5.0-225 (5.0 and 6.9 for two of the five the rest of the search
        missed).  The coherence test decides (chance ``coherence_z`` <= 4.4 against 10).
    threads : int
        Threads for the hypothesis search of one query (0 = one per core).  Batch
        scans with one worker process per core use 1.
    """

    min_speed: float = 0.65
    max_speed: float = 1.55
    speed_step: float = 0.015
    max_pitch_semitones: float = 7.0
    pitch_step_semitones: float = 0.5
    search_speed: bool = True
    search_tempo: bool = True
    search_pitch: bool = True
    search_tempo_key: bool = True
    tempo_key_max_change: float = 0.1
    tempo_key_max_semitones: float = 3.0
    wide_tempo_key_max_semitones: float = 6.0
    wide_tempo_key_max_change: float = 0.1
    wide_refine_hypotheses: int = 2
    wide_min_significance: float = 30.0
    offset_bin_frames: int = 4
    probe_margin: float = 0.2
    min_score: int = 10
    min_significance: float = 20.0
    verify_audio: bool = True
    verify_min_significance: float = 10.0
    verify_min_correlation: float = 0.8
    verify_min_peaks_z: float = 10.0
    verify_min_coherence_z: float = 10.0
    verify_min_coherence: float = 0.15
    coherence_min_fraction: float = 0.05
    coherence_min_score: int = 5
    verify_peaks_min_fraction: float = 0.3
    verify_min_score: int = 7
    review_max_significance: float = 80.0
    refute_max_correlation: float = 0.4
    refute_max_peaks_z: float = 5.0
    audio_edges: bool = True
    max_matches: int = 10
    inlier_seconds: float = 0.048
    max_gap_seconds: float = 2.5
    min_contrast: float = 2.0
    shadow_ratio: float = 0.25
    coarse_peaks_per_second: float = 9.0
    coarse_fan_out: int = 3
    refine_hypotheses: int = 4
    dense_coarse_peaks_per_second: float = 18.0
    dense_coarse_max_explained: float = 0.5
    dense_refine_hypotheses: int = 2
    coarse_probe_margin: float = 0.1
    coarse_min_score: int = 4
    coarse_min_significance: float = 5.0
    stop_key_ratio: float = 4.0
    coarse_stop_key_ratio: float = 2.0
    stop_key_min_postings: int = 64
    mix_peaks_per_second: float = 60.0
    mix_fan_out: int = 20
    mix_neighbourhood_frames: int = 2
    mix_neighbourhood_semitones: float = 2.0 / 3.0
    mix_window_seconds: float = 2.5
    mix_min_fraction: float = 0.2
    threads: int = 0
    derivation: bool = True

    @property
    def verifies(self) -> bool:
        """Whether candidates under ``min_significance`` are checked on the audio."""
        return self.verify_audio and self.weakest_checked < self.min_significance

    @property
    def verify_peaks_min_significance(self) -> float:
        """Least significance of a candidate the peak test checks (6 by default)."""
        return self.verify_peaks_min_fraction * self.min_significance

    @property
    def coherence_min_significance(self) -> float:
        """Least significance of a candidate at identity the coherence test checks (1 by
        default)."""
        return self.coherence_min_fraction * self.min_significance

    @property
    def weakest_checked(self) -> float:
        """Least significance of a candidate checked on the audio (either test)."""
        return min(self.verify_min_significance, self.verify_peaks_min_significance)

    @property
    def candidate_min_score(self) -> int:
        """Fewest aligned landmarks of a candidate the search keeps: ``min_score``, or
        ``verify_min_score`` when weaker candidates are checked on the audio."""
        return min(self.min_score, self.verify_min_score) if self.verifies else self.min_score

    @property
    def mix_look(self) -> bool:
        """Whether a query with no match over the landmarks' threshold is looked at again
        for a recording under a loud mix (``mix_peaks_per_second``; needs the coherence
        test, so ``verify_audio``)."""
        return self.verifies and self.mix_peaks_per_second > 0

    @property
    def mix_min_significance(self) -> float:
        """Least significance of a mix-look alignment checked on the audio (4 by
        default)."""
        return self.mix_min_fraction * self.min_significance

    def mix_peak_config(self, query: PeakConfig) -> PeakConfig:
        """The query side's peak picking for the mix look."""
        return replace(query, peaks_per_second=self.mix_peaks_per_second,
                       fan_out=self.mix_fan_out,
                       neighbourhood_frames=self.mix_neighbourhood_frames,
                       neighbourhood_semitones=self.mix_neighbourhood_semitones)

    @property
    def needs_audio(self) -> bool:
        """Whether matching reads the query's samples, not only its landmarks (the
        derivation tier, audio verification, segment edges)."""
        return self.derivation or self.verifies or self.audio_edges

    def with_(self, **changes) -> "MatchConfig":
        return replace(self, **changes)


DEFAULT = FingerprintConfig()

#: Named presets.  ``default`` is what ``fp index`` uses; an index records its config,
#: and queries are always analysed with the index's own config.
PRESETS: dict[str, FingerprintConfig] = {
    "default": DEFAULT,
    # Denser catalogue side: better recall on very short or very noisy excerpts, ~2x index.
    "dense": DEFAULT.with_(index=PeakConfig(peaks_per_second=16.0, fan_out=4)),
}

MATCH_PRESETS: dict[str, MatchConfig] = {
    "default": MatchConfig(),
    # Plain landmark matching: no speed/tempo/pitch search, no derivation tier.  Fastest.
    "fast": MatchConfig(search_speed=False, search_tempo=False, search_pitch=False,
                        search_tempo_key=False, derivation=False, verify_audio=False,
                        audio_edges=False),
    # The recording tier alone (what `fp bench` times against peers).
    "recording": MatchConfig(derivation=False),
}
