"""Inner Mongolia's county-level address codes (GB/T 2260) and their names.

The report and the spreadsheet are organized by county (旗县), the unit a
caseworker works in. A roster's ``region_code`` and the address code of an
identity number are 6-digit GB/T 2260 codes. Codes are never reassigned, and
older identity numbers still carry codes retired when leagues became cities
(昭乌达盟 → 赤峰市 1983, 哲里木盟 → 通辽市 1999, 伊克昭盟 → 鄂尔多斯市 2001,
呼伦贝尔盟 → 呼伦贝尔市 2001, 乌兰察布盟 → 乌兰察布市 2003, 巴彦淖尔盟 → 巴彦淖尔市
2003), so both are listed: a retired code is named as it was, with the unit it
belongs to now.

Source and limits (docs/formats.md, "County names"): written down from the
GB/T 2260 editions and the civil affairs code lists for the 103 county-level
units of 2024, and the retired codes of the former leagues; not checked
against an official machine-readable list. A code that is not here is shown
with its league or city (from the first four digits) and the code itself, and
is never rejected.
"""

from __future__ import annotations

from functools import lru_cache

#: league and city names (first four digits); the retired leagues are marked by RETIRED_LEAGUES
LEAGUES: dict[str, str] = {
    "1501": "呼和浩特市",
    "1502": "包头市",
    "1503": "乌海市",
    "1504": "赤峰市",
    "1505": "通辽市",
    "1506": "鄂尔多斯市",
    "1507": "呼伦贝尔市",
    "1508": "巴彦淖尔市",
    "1509": "乌兰察布市",
    "1522": "兴安盟",
    "1525": "锡林郭勒盟",
    "1529": "阿拉善盟",
}

#: retired league codes -> (the league's old name, the league or city it became)
RETIRED_LEAGUES: dict[str, tuple[str, str]] = {
    "1521": ("呼伦贝尔盟", "呼伦贝尔市"),
    "1523": ("哲里木盟", "通辽市"),
    "1524": ("昭乌达盟", "赤峰市"),
    "1526": ("乌兰察布盟", "乌兰察布市"),
    "1527": ("伊克昭盟", "鄂尔多斯市"),
    "1528": ("巴彦淖尔盟", "巴彦淖尔市"),
}

#: the 103 county-level units in use (市辖区, 县级市, 县, 旗, 自治旗)
COUNTIES: dict[str, str] = {
    # 呼和浩特市
    "150102": "新城区",
    "150103": "回民区",
    "150104": "玉泉区",
    "150105": "赛罕区",
    "150121": "土默特左旗",
    "150122": "托克托县",
    "150123": "和林格尔县",
    "150124": "清水河县",
    "150125": "武川县",
    # 包头市
    "150202": "东河区",
    "150203": "昆都仑区",
    "150204": "青山区",
    "150205": "石拐区",
    "150206": "白云鄂博矿区",
    "150207": "九原区",
    "150221": "土默特右旗",
    "150222": "固阳县",
    "150223": "达尔罕茂明安联合旗",
    # 乌海市
    "150302": "海勃湾区",
    "150303": "海南区",
    "150304": "乌达区",
    # 赤峰市
    "150402": "红山区",
    "150403": "元宝山区",
    "150404": "松山区",
    "150421": "阿鲁科尔沁旗",
    "150422": "巴林左旗",
    "150423": "巴林右旗",
    "150424": "林西县",
    "150425": "克什克腾旗",
    "150426": "翁牛特旗",
    "150428": "喀喇沁旗",
    "150429": "宁城县",
    "150430": "敖汉旗",
    # 通辽市
    "150502": "科尔沁区",
    "150521": "科尔沁左翼中旗",
    "150522": "科尔沁左翼后旗",
    "150523": "开鲁县",
    "150524": "库伦旗",
    "150525": "奈曼旗",
    "150526": "扎鲁特旗",
    "150581": "霍林郭勒市",
    # 鄂尔多斯市
    "150602": "东胜区",
    "150603": "康巴什区",
    "150621": "达拉特旗",
    "150622": "准格尔旗",
    "150623": "鄂托克前旗",
    "150624": "鄂托克旗",
    "150625": "杭锦旗",
    "150626": "乌审旗",
    "150627": "伊金霍洛旗",
    # 呼伦贝尔市
    "150702": "海拉尔区",
    "150703": "扎赉诺尔区",
    "150721": "阿荣旗",
    "150722": "莫力达瓦达斡尔族自治旗",
    "150723": "鄂伦春自治旗",
    "150724": "鄂温克族自治旗",
    "150725": "陈巴尔虎旗",
    "150726": "新巴尔虎左旗",
    "150727": "新巴尔虎右旗",
    "150781": "满洲里市",
    "150782": "牙克石市",
    "150783": "扎兰屯市",
    "150784": "额尔古纳市",
    "150785": "根河市",
    # 巴彦淖尔市
    "150802": "临河区",
    "150821": "五原县",
    "150822": "磴口县",
    "150823": "乌拉特前旗",
    "150824": "乌拉特中旗",
    "150825": "乌拉特后旗",
    "150826": "杭锦后旗",
    # 乌兰察布市
    "150902": "集宁区",
    "150921": "卓资县",
    "150922": "化德县",
    "150923": "商都县",
    "150924": "兴和县",
    "150925": "凉城县",
    "150926": "察哈尔右翼前旗",
    "150927": "察哈尔右翼中旗",
    "150928": "察哈尔右翼后旗",
    "150929": "四子王旗",
    "150981": "丰镇市",
    # 兴安盟
    "152201": "乌兰浩特市",
    "152202": "阿尔山市",
    "152221": "科尔沁右翼前旗",
    "152222": "科尔沁右翼中旗",
    "152223": "扎赉特旗",
    "152224": "突泉县",
    # 锡林郭勒盟
    "152501": "二连浩特市",
    "152502": "锡林浩特市",
    "152522": "阿巴嘎旗",
    "152523": "苏尼特左旗",
    "152524": "苏尼特右旗",
    "152525": "东乌珠穆沁旗",
    "152526": "西乌珠穆沁旗",
    "152527": "太仆寺旗",
    "152528": "镶黄旗",
    "152529": "正镶白旗",
    "152530": "正蓝旗",
    "152531": "多伦县",
    # 阿拉善盟
    "152921": "阿拉善左旗",
    "152922": "阿拉善右旗",
    "152923": "额济纳旗",
}

#: retired county codes (former leagues and renamed units) -> (old name, the unit today)
RETIRED_COUNTIES: dict[str, tuple[str, str]] = {
    # 呼伦贝尔盟 (1521), a city since 2001
    "152101": ("海拉尔市", "呼伦贝尔市海拉尔区"),
    "152102": ("满洲里市", "呼伦贝尔市满洲里市"),
    "152103": ("扎兰屯市", "呼伦贝尔市扎兰屯市"),
    "152104": ("牙克石市", "呼伦贝尔市牙克石市"),
    "152105": ("根河市", "呼伦贝尔市根河市"),
    "152106": ("额尔古纳市", "呼伦贝尔市额尔古纳市"),
    "152122": ("阿荣旗", "呼伦贝尔市阿荣旗"),
    "152123": ("莫力达瓦达斡尔族自治旗", "呼伦贝尔市莫力达瓦达斡尔族自治旗"),
    "152127": ("鄂伦春自治旗", "呼伦贝尔市鄂伦春自治旗"),
    "152128": ("鄂温克族自治旗", "呼伦贝尔市鄂温克族自治旗"),
    "152129": ("新巴尔虎右旗", "呼伦贝尔市新巴尔虎右旗"),
    "152130": ("新巴尔虎左旗", "呼伦贝尔市新巴尔虎左旗"),
    "152131": ("陈巴尔虎旗", "呼伦贝尔市陈巴尔虎旗"),
    # 哲里木盟 (1523), 通辽市 since 1999
    "152301": ("通辽市", "通辽市科尔沁区"),
    "152302": ("霍林郭勒市", "通辽市霍林郭勒市"),
    "152322": ("科尔沁左翼中旗", "通辽市科尔沁左翼中旗"),
    "152323": ("科尔沁左翼后旗", "通辽市科尔沁左翼后旗"),
    "152324": ("开鲁县", "通辽市开鲁县"),
    "152325": ("库伦旗", "通辽市库伦旗"),
    "152326": ("奈曼旗", "通辽市奈曼旗"),
    "152327": ("扎鲁特旗", "通辽市扎鲁特旗"),
    # 昭乌达盟 (1524), 赤峰市 since 1983
    "152401": ("赤峰市", "赤峰市红山区"),
    "152421": ("阿鲁科尔沁旗", "赤峰市阿鲁科尔沁旗"),
    "152422": ("巴林左旗", "赤峰市巴林左旗"),
    "152423": ("巴林右旗", "赤峰市巴林右旗"),
    "152424": ("林西县", "赤峰市林西县"),
    "152425": ("克什克腾旗", "赤峰市克什克腾旗"),
    "152426": ("翁牛特旗", "赤峰市翁牛特旗"),
    "152428": ("喀喇沁旗", "赤峰市喀喇沁旗"),
    "152429": ("宁城县", "赤峰市宁城县"),
    "152430": ("敖汉旗", "赤峰市敖汉旗"),
    # 乌兰察布盟 (1526), a city since 2003
    "152601": ("集宁市", "乌兰察布市集宁区"),
    "152602": ("丰镇市", "乌兰察布市丰镇市"),
    "152621": ("武川县", "呼和浩特市武川县"),
    "152622": ("和林格尔县", "呼和浩特市和林格尔县"),
    "152623": ("清水河县", "呼和浩特市清水河县"),
    "152624": ("卓资县", "乌兰察布市卓资县"),
    "152625": ("化德县", "乌兰察布市化德县"),
    "152626": ("商都县", "乌兰察布市商都县"),
    "152627": ("兴和县", "乌兰察布市兴和县"),
    "152629": ("凉城县", "乌兰察布市凉城县"),
    "152630": ("察哈尔右翼前旗", "乌兰察布市察哈尔右翼前旗"),
    "152631": ("察哈尔右翼中旗", "乌兰察布市察哈尔右翼中旗"),
    "152632": ("察哈尔右翼后旗", "乌兰察布市察哈尔右翼后旗"),
    "152633": ("达尔罕茂明安联合旗", "包头市达尔罕茂明安联合旗"),
    "152634": ("四子王旗", "乌兰察布市四子王旗"),
    # 伊克昭盟 (1527), 鄂尔多斯市 since 2001
    "152701": ("东胜市", "鄂尔多斯市东胜区"),
    "152722": ("达拉特旗", "鄂尔多斯市达拉特旗"),
    "152723": ("准格尔旗", "鄂尔多斯市准格尔旗"),
    "152724": ("鄂托克前旗", "鄂尔多斯市鄂托克前旗"),
    "152725": ("鄂托克旗", "鄂尔多斯市鄂托克旗"),
    "152726": ("杭锦旗", "鄂尔多斯市杭锦旗"),
    "152727": ("乌审旗", "鄂尔多斯市乌审旗"),
    "152728": ("伊金霍洛旗", "鄂尔多斯市伊金霍洛旗"),
    # 巴彦淖尔盟 (1528), a city since 2003
    "152801": ("临河市", "巴彦淖尔市临河区"),
    "152822": ("五原县", "巴彦淖尔市五原县"),
    "152823": ("磴口县", "巴彦淖尔市磴口县"),
    "152824": ("乌拉特前旗", "巴彦淖尔市乌拉特前旗"),
    "152825": ("乌拉特中旗", "巴彦淖尔市乌拉特中旗"),
    "152826": ("乌拉特后旗", "巴彦淖尔市乌拉特后旗"),
    "152827": ("杭锦后旗", "巴彦淖尔市杭锦后旗"),
}

UNKNOWN = "旗县未填"


@lru_cache(maxsize=1 << 12)  # a roster has few counties and many children in each
def county_name(code: str | None) -> str:
    """The full name of a county code: 赤峰市宁城县; a retired code: 昭乌达盟宁城县(今赤峰市宁城县).

    An unknown code: its league or city and the code (赤峰市 150499); outside
    Inner Mongolia or malformed: the code. No code: 旗县未填.
    """
    if not code:
        return UNKNOWN
    county = COUNTIES.get(code)
    if county is not None:
        return f"{LEAGUES[code[:4]]}{county}"
    retired = RETIRED_COUNTIES.get(code)
    if retired is not None:
        old, now = retired
        league = RETIRED_LEAGUES.get(code[:4])
        prefix = league[0] if league else ""
        return f"{prefix}{old}(旧代码,今{now})"
    league_now = LEAGUES.get(code[:4])
    if league_now is not None:
        return f"{league_now} {code}"
    old_league = RETIRED_LEAGUES.get(code[:4])
    if old_league is not None:
        return f"{old_league[0]} {code}(旧代码,今属{old_league[1]})"
    return code


@lru_cache(maxsize=1 << 12)
def county_short(code: str | None) -> str:
    """A chart label: :func:`county_name` without the note on a retired code (marked 旧)."""
    if code and code in RETIRED_COUNTIES:
        league = RETIRED_LEAGUES.get(code[:4])
        return f"{league[0] if league else ''}{RETIRED_COUNTIES[code][0]}(旧)"
    name = county_name(code)
    return name.split("(", 1)[0] + ("(旧)" if "(" in name else "")


def is_known(code: str) -> bool:
    """Whether ``code`` is a county code of this table (in use or retired)."""
    return code in COUNTIES or code in RETIRED_COUNTIES


__all__ = [
    "COUNTIES",
    "LEAGUES",
    "RETIRED_COUNTIES",
    "RETIRED_LEAGUES",
    "UNKNOWN",
    "county_name",
    "county_short",
    "is_known",
]
