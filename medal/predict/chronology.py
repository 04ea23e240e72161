"""The clinician's question: is this child's bone age advanced or delayed for the age and sex?

Chronological age (months), from the first source that gives it:

1. the input CSV's `chronological_age` column (months);
2. DICOM PatientBirthDate with the study's date (StudyDate, else AcquisitionDate, SeriesDate, ContentDate):
   exact to the day;
3. DICOM PatientAge (`nnnD`, `nnnW`, `nnnM`, `nnnY`): as exact as its unit (a `010Y` child is 120 to 131
   months old; the age is taken as written, 120).

Only the age is kept: a birth date is read to compute it and never written out.

The bone age minus the chronological age is reported with the model's interval moved by the same amount, and
as an SDS (z-score): (bone age - chronological age) / SD, the SD of skeletal age at that chronological age and
sex in the Greulich-Pyle atlas (`GP_SD`, linearly interpolated between its ages; none outside them). Normal
variation is |SDS| <= 2. The assessment says

- `advanced` / `delayed`: the SDS is beyond +2 / -2 *and* so is the near end of the interval (the model's own
  error cannot bring the bone age back into the normal band);
- `uncertain`: the SDS is beyond +-2 but the interval reaches back inside it;
- `normal`: |SDS| <= 2;
- `no_age`: the input gives no chronological age; `no_reference`: the sex is unknown or the age lies outside
  the table (3 months to 17 years for boys, 16 years for girls).

Source of the SDs: W. W. Greulich and S. I. Pyle, *Radiographic Atlas of Skeletal Development of the Hand and
Wrist*, 2nd ed., Stanford University Press, 1959: the standard deviations of skeletal age by chronological age
for boys and girls of the Brush Foundation study, on which the atlas's standards rest.
"""

from __future__ import annotations

import calendar
import math
import re
from datetime import date

import numpy as np

from medal.data.dicom import DicomHeader

DAYS_PER_MONTH = 365.25 / 12
SDS_LIMIT = 2.0
ASSESSMENTS = ("advanced", "delayed", "uncertain", "normal", "no_age", "no_reference")

#: Greulich & Pyle (1959), SD of skeletal age (months) at each chronological age (months), by sex.
GP_AGES = {"M": (3, 6, 9, 12, 18, 24, 30, 36, 42, 48, 54, 60, 72, 84, 96, 108, 120, 132, 144, 156, 168, 180, 192, 204),
           "F": (3, 6, 9, 12, 18, 24, 30, 36, 42, 48, 54, 60, 72, 84, 96, 108, 120, 132, 144, 156, 168, 180, 192)}
GP_SD = {"M": (0.69, 1.13, 1.43, 1.97, 3.52, 3.92, 4.52, 5.08, 5.40, 6.66, 8.36, 8.79, 9.17, 8.91, 9.10, 9.00, 9.79,
               10.09, 10.38, 10.44, 10.72, 11.32, 12.86, 13.05),
         "F": (0.72, 1.16, 1.36, 1.77, 3.49, 4.64, 5.37, 5.97, 7.48, 8.98, 10.73, 11.65, 10.23, 9.64, 10.23, 10.74,
               11.73, 11.94, 10.24, 10.67, 11.30, 9.23, 7.31)}
_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_UNIT_MONTHS = {"D": 1 / DAYS_PER_MONTH, "W": 7 / DAYS_PER_MONTH, "M": 1.0, "Y": 12.0}


def parse_patient_age(text: str | None) -> float | None:
    """Months of a DICOM Age String (PS3.5 AS: `nnnD`, `nnnW`, `nnnM`, `nnnY`); None when absent or malformed.

    Examples:
        >>> parse_patient_age("010Y"), parse_patient_age("018M"), round(parse_patient_age("030D"), 3)
        (120.0, 18.0, 0.986)
        >>> parse_patient_age("ten"), parse_patient_age(None)
        (None, None)
    """
    match = _AGE.match((text or "").strip().upper())
    return None if match is None else int(match.group(1)) * _UNIT_MONTHS[match.group(2)]


def _date(text: str | None) -> date | None:
    digits = (text or "").strip()[:8]
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8])) if len(digits) == 8 else None
    except ValueError:
        return None


def months_between(birth: str | None, study: str | None) -> float | None:
    """Months from a DICOM date (YYYYMMDD) of birth to that of the study; None when either is absent or invalid,
    or the study is before the birth.

    Examples:
        >>> months_between("20150301", "20250301"), round(months_between("20150131", "20150315"), 3)
        (120.0, 1.493)
        >>> months_between("20250301", "20150301") is None, months_between("2015", "20250301") is None
        (True, True)
    """
    born, seen = _date(birth), _date(study)
    if born is None or seen is None or seen < born:
        return None
    whole = (seen.year - born.year) * 12 + seen.month - born.month - (seen.day < born.day)
    year, month = divmod(born.month - 1 + whole, 12)
    anchor = date(born.year + year, month + 1, min(born.day, calendar.monthrange(born.year + year, month + 1)[1]))
    return whole + (seen - anchor).days / DAYS_PER_MONTH  # calendar months, then the days past the last one


def chronological_age(given: float, header: DicomHeader | None) -> tuple[float, str]:
    """(months, source) from the input's value (`given`, NaN when absent), else the DICOM header; (NaN, '') when
    nothing gives it. Sources: `input`, `dicom_dates`, `dicom_age`."""
    if given is not None and np.isfinite(given):
        return float(given), "input"
    if header is not None:
        by_dates = months_between(header.birth_date, header.study_date)
        if by_dates is not None:
            return by_dates, "dicom_dates"
        by_age = parse_patient_age(header.patient_age)
        if by_age is not None:
            return by_age, "dicom_age"
    return math.nan, ""


def reference_sd(age: float, sex: str) -> float:
    """The Greulich-Pyle SD (months) of skeletal age at chronological `age` months for sex 'M' or 'F', linearly
    interpolated; NaN for another sex or an age outside the table.

    Examples:
        >>> reference_sd(120, "M"), reference_sd(126, "F"), reference_sd(240, "F"), reference_sd(120, "unknown")
        (9.79, 11.835, nan, nan)
    """
    if sex not in GP_SD or not np.isfinite(age) or not GP_AGES[sex][0] <= age <= GP_AGES[sex][-1]:
        return math.nan
    return float(np.interp(age, GP_AGES[sex], GP_SD[sex]))


def assess(boneage: float, low: float, high: float, age: float, sex: str) -> dict[str, float | str]:
    """The clinician's columns of one estimate: `age_gap` (bone age - chronological age) with its interval
    (`age_gap_low`, `age_gap_high`), `sds` and `assessment` (module docstring).

    Examples:
        >>> row = assess(150.0, 140.0, 160.0, 120.0, "M")  # SD 9.79: SDS 3.06, the interval's low end 2.04
        >>> row["age_gap"], round(row["sds"], 2), row["assessment"]
        (30.0, 3.06, 'advanced')
        >>> assess(150.0, 125.0, 175.0, 120.0, "M")["assessment"]  # the low end's SDS is 0.51: not shown
        'uncertain'
        >>> assess(100.0, 90.0, 110.0, float("nan"), "M")["assessment"]
        'no_age'
    """
    if not np.isfinite(age):
        return {"age_gap": math.nan, "age_gap_low": math.nan, "age_gap_high": math.nan, "sds": math.nan,
                "assessment": "no_age"}
    row: dict[str, float | str] = {"age_gap": boneage - age, "age_gap_low": low - age, "age_gap_high": high - age}
    sd = reference_sd(age, sex)
    if not np.isfinite(sd):
        return {**row, "sds": math.nan, "assessment": "no_reference"}
    sds, sds_low, sds_high = (boneage - age) / sd, (low - age) / sd, (high - age) / sd
    if abs(sds) <= SDS_LIMIT:
        assessment = "normal"
    elif sds > SDS_LIMIT:
        assessment = "advanced" if sds_low > SDS_LIMIT else "uncertain"
    else:
        assessment = "delayed" if sds_high < -SDS_LIMIT else "uncertain"
    return {**row, "sds": sds, "assessment": assessment}
