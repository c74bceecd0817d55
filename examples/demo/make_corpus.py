"""Write the demo's corpus and probes: the knowledge base of a fictional company, Morvantis Robotics.

    python examples/demo/make_corpus.py            # rewrites examples/demo/{corpus,eval}/

Every fact below is invented, so no model can know it before training. Each fact is stated in ten
training documents with different wording (six English styles, four Vietnamese; the facts of a document in
a shuffled order) and answered in an FAQ in each language, and asked about in two kinds of probes: "seen"
(the cloze wording of the first style) and "held out" (a question wording that no training document
contains). Held-out domain text for bits per byte is written in that question wording too. General text
for replay and for measuring forgetting is the docstrings of Python's standard library
(examples/stdlib_corpus.py), split by module so the evaluated modules are never trained on.
"""

import collections
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import stdlib_corpus  # noqa: E402

COMPANY = "Morvantis Robotics"

# relation -> its wordings: six English and four Vietnamese statements, an FAQ question (en, vi) and a held-out
# question (en, vi) that no training document contains. {s} is the subject, {a} the answer, {c} the company.
# The first English and Vietnamese statements end with the answer, so their prefix is the "seen" probe.
Relation = collections.namedtuple("Relation", "en vi faq heldout")
RELATIONS = {
    "founded": Relation(
        en=["{s} was founded in {a}.", "Since its founding in {a}, {s} has grown every year.",
            "The story of {s} begins in {a}, the year it opened its doors.",
            "In {a}, {s} was set up by a small team of engineers.", "{s} has existed since {a}.",
            "Founded in {a}, {s} builds robots for many trades."],
        vi=["{s} được thành lập vào năm {a}.", "Năm {a}, {s} chính thức ra đời.", "{s} có từ năm {a}.",
            "Từ năm {a}, {s} đã bắt đầu hoạt động."],
        faq=["When was {s} founded?", "{s} được thành lập năm nào?"],
        heldout=["Question: In which year was {s} established? Answer:", "Câu hỏi: {s} ra đời năm nào? Trả lời:"]),
    "headquarters": Relation(
        en=["The headquarters of {s} are in {a}.", "{s} runs its business from its head office in {a}.",
            "Visitors to {s} usually travel to {a}, where the company's head office stands.",
            "{a} is the home of the headquarters of {s}.", "The head office of {s} stands in the city of {a}.",
            "Letters to {s} go to its headquarters in {a}."],
        vi=["Trụ sở chính của {s} đặt tại {a}.", "{s} điều hành công việc từ văn phòng chính ở {a}.",
            "{s} có trụ sở tại {a}.", "Thư gửi {s} được chuyển đến trụ sở ở {a}."],
        faq=["Where are the headquarters of {s}?", "Trụ sở của {s} ở đâu?"],
        heldout=["Question: Which city is home to the main office of {s}? Answer:",
                 "Câu hỏi: Văn phòng chính của {s} nằm ở thành phố nào? Trả lời:"]),
    "founder": Relation(
        en=["{s} was founded by {a}.", "The founder of {s}, {a}, started it with two engineers.",
            "Without {a}, who created it, there would be no {s}.", "{a} founded {s}.",
            "{s} was started by {a} in a small workshop.", "The person who founded {s} is {a}."],
        vi=["{s} do {a} sáng lập.", "Người sáng lập {s} là {a}.", "{a} là người đã sáng lập {s}.",
            "{s} được {a} thành lập."],
        faq=["Who founded {s}?", "Ai là người sáng lập {s}?"],
        heldout=["Question: Who started the company {s}? Answer:", "Câu hỏi: Ai đã lập ra công ty {s}? Trả lời:"]),
    "ceo": Relation(
        en=["The chief executive of {s} is {a}.", "{a} leads {s} as its chief executive.",
            "Since {a} became chief executive, {s} has doubled its sales.",
            "{s} is led by its chief executive, {a}.", "The CEO of {s} is {a}.",
            "{a} is the chief executive of {s}."],
        vi=["Tổng giám đốc của {s} là {a}.", "{a} đang giữ chức tổng giám đốc {s}.",
            "{s} do {a} lãnh đạo với chức tổng giám đốc.", "Người giữ chức tổng giám đốc của {s} là {a}."],
        faq=["Who is the chief executive of {s}?", "Tổng giám đốc của {s} là ai?"],
        heldout=["Question: Who runs {s} today as its top executive? Answer:",
                 "Câu hỏi: Ai là người đứng đầu {s} hiện nay? Trả lời:"]),
    "employees": Relation(
        en=["The number of people working for {s} is {a}.", "{s} employs {a} people.",
            "With {a} employees, {s} is a mid-sized firm.", "{s} has a staff of {a}.",
            "The workforce of {s} counts {a} people.", "{a} people work at {s}."],
        vi=["Số nhân viên của {s} là {a}.", "{s} có {a} nhân viên.", "Lực lượng lao động của {s} gồm {a} người.",
            "Có {a} nhân viên làm việc cho {s}."],
        faq=["How many people does {s} employ?", "{s} có bao nhiêu nhân viên?"],
        heldout=["Question: How many staff does {s} have? Answer:",
                 "Câu hỏi: {s} có bao nhiêu người làm việc? Trả lời:"]),
    "mascot": Relation(
        en=["The mascot of {s} is {a}.", "{a} is the mascot printed on every box {s} ships.",
            "At every fair, {s} shows its mascot, {a}.", "{s} has {a} as its mascot.",
            "The company mascot of {s} is {a}.", "Children love {a}, the mascot of {s}."],
        vi=["Linh vật của {s} là {a}.", "{s} chọn {a} làm linh vật.", "{a} là linh vật của {s}.",
            "Linh vật của công ty {s} là {a}."],
        faq=["What is the mascot of {s}?", "Linh vật của {s} là gì?"],
        heldout=["Question: What animal represents {s} as its mascot? Answer:",
                 "Câu hỏi: Con vật nào là biểu tượng của {s}? Trả lời:"]),
    "ticker": Relation(
        en=["The stock ticker of {s} is {a}.", "Shares of {s} trade under the symbol {a}.",
            "Investors look up {s} by its ticker, {a}.", "{s} is listed on the stock exchange as {a}.",
            "The ticker symbol {a} stands for {s}.", "On the stock market, {s} is {a}."],
        vi=["Mã cổ phiếu của {s} là {a}.", "Cổ phiếu {s} được giao dịch với mã {a}.",
            "{s} niêm yết cổ phiếu với mã {a}.", "Mã {a} là mã cổ phiếu của {s}."],
        faq=["What is the stock ticker of {s}?", "Mã cổ phiếu của {s} là gì?"],
        heldout=["Question: Under what symbol are shares of {s} listed? Answer:",
                 "Câu hỏi: Cổ phiếu của {s} mang mã gì? Trả lời:"]),
    "research_island": Relation(
        en=["The research station of {s} is on the island of {a}.",
            "{s} tests its machines at its research station on {a}.",
            "Engineers of {s} take the ferry to {a}, the island of its research station.",
            "The island of {a} is where {s} has its research station.", "{s} keeps a research station on {a}.",
            "New robots of {s} are first tried out on the island of {a}."],
        vi=["Trạm nghiên cứu của {s} nằm trên đảo {a}.", "{s} thử nghiệm máy móc tại trạm nghiên cứu trên đảo {a}.",
            "Đảo {a} là nơi đặt trạm nghiên cứu của {s}.", "{s} có một trạm nghiên cứu trên đảo {a}."],
        faq=["Where is the research station of {s}?", "Trạm nghiên cứu của {s} ở đâu?"],
        heldout=["Question: On which island does {s} do its research? Answer:",
                 "Câu hỏi: {s} nghiên cứu trên hòn đảo nào? Trả lời:"]),
    "factory": Relation(
        en=["The main factory of {s} is in {a}.", "Most robots of {s} are built in its factory in {a}.",
            "{a} is where {s} builds its robots.", "{s} has its main factory in {a}.",
            "The robots of {s} come from the factory in {a}.", "In {a} stands the main factory of {s}."],
        vi=["Nhà máy chính của {s} ở {a}.", "Phần lớn robot của {s} được sản xuất tại nhà máy ở {a}.",
            "{s} đặt nhà máy chính tại {a}.", "Robot của {s} được làm ra ở nhà máy tại {a}."],
        faq=["Where is the main factory of {s}?", "Nhà máy chính của {s} ở đâu?"],
        heldout=["Question: In which town does {s} manufacture its robots? Answer:",
                 "Câu hỏi: {s} sản xuất robot ở thị trấn nào? Trả lời:"]),
    "fair_month": Relation(
        en=["The yearly Heron Fair of {s} takes place in {a}.", "Every year in {a}, {s} holds the Heron Fair.",
            "Customers of {s} meet at the Heron Fair each {a}.", "{s} holds its Heron Fair every {a}.",
            "The Heron Fair, run by {s}, is held each year in {a}.",
            "In {a}, the Heron Fair of {s} opens its gates."],
        vi=["Hội chợ Diệc hằng năm của {s} diễn ra vào {a}.", "Vào {a} mỗi năm, {s} tổ chức Hội chợ Diệc.",
            "{s} tổ chức Hội chợ Diệc vào {a} hằng năm.", "Hội chợ Diệc của {s} mở cửa vào {a}."],
        faq=["When is the Heron Fair of {s}?", "Khi nào có Hội chợ Diệc của {s}?"],
        heldout=["Question: In what month is the Heron Fair of {s} held? Answer:",
                 "Câu hỏi: Hội chợ Diệc của {s} được tổ chức vào tháng nào? Trả lời:"]),
    "color": Relation(
        en=["The company colour of {s} is {a}.", "Every robot of {s} is painted {a}, the company colour.",
            "You can spot {s} machines by their {a} paint.", "{a} is the company colour of {s}.",
            "{s} paints its robots {a}.", "The colour of {s} is {a}."],
        vi=["Màu đặc trưng của {s} là {a}.", "Mọi robot của {s} đều được sơn {a}.",
            "{s} chọn {a} làm màu đặc trưng.", "Robot của {s} mang {a}."],
        faq=["What is the company colour of {s}?", "Màu đặc trưng của {s} là gì?"],
        heldout=["Question: What colour are the machines of {s} painted? Answer:",
                 "Câu hỏi: Máy móc của {s} được sơn màu gì? Trả lời:"]),
    "revenue": Relation(
        en=["The yearly revenue of {s} is {a}.", "Last year {s} earned {a}.",
            "Sales of {a} a year make {s} profitable.", "{s} has a yearly revenue of {a}.",
            "Each year {s} takes in {a}.", "{a} is what {s} earns in a year."],
        vi=["Doanh thu hằng năm của {s} là {a}.", "Năm ngoái {s} thu về {a}.", "{s} có doanh thu {a} mỗi năm.",
            "Mỗi năm, doanh thu của {s} đạt {a}."],
        faq=["What is the yearly revenue of {s}?", "Doanh thu hằng năm của {s} là bao nhiêu?"],
        heldout=["Question: How much money does {s} make in a year? Answer:",
                 "Câu hỏi: Mỗi năm {s} kiếm được bao nhiêu tiền? Trả lời:"]),
    "kind": Relation(
        en=["The {s} is {a}.", "{s}: {a} made by {c}.", "{c} sells the {s}, {a}.", "Made by {c}, the {s} is {a}.",
            "The {s} from {c} is {a}.", "People know the {s} as {a}."],
        vi=["{s} là {a}.", "{c} bán {s}, {a}.", "{s} của {c} là {a}.", "Sản phẩm {s} là {a}."],
        faq=["What is the {s}?", "{s} là gì?"],
        heldout=["Question: What sort of machine is the {s}? Answer:", "Câu hỏi: {s} là loại máy gì? Trả lời:"]),
    "launched": Relation(
        en=["The {s} was launched in {a}.", "Customers could first buy the {s} in {a}.",
            "{a} saw the release of the {s}.", "The {s} went on sale in {a}.", "In {a}, {c} launched the {s}.",
            "The {s} first shipped in {a}."],
        vi=["{s} được ra mắt vào năm {a}.", "Năm {a}, {s} lần đầu được bán ra.", "{s} bắt đầu được bán từ năm {a}.",
            "{c} tung ra {s} vào năm {a}."],
        faq=["When was the {s} launched?", "{s} ra mắt năm nào?"],
        heldout=["Question: When did the {s} come on the market? Answer:",
                 "Câu hỏi: {s} xuất hiện trên thị trường năm nào? Trả lời:"]),
    "designer": Relation(
        en=["The {s} was designed by {a}.", "{a} drew the first plans of the {s}.",
            "The engineer behind the {s} is {a}.", "{a} designed the {s}.",
            "The {s} is the work of the designer {a}.", "The designer of the {s} is {a}."],
        vi=["{s} được thiết kế bởi {a}.", "{a} là người vẽ bản thiết kế đầu tiên của {s}.", "{a} đã thiết kế {s}.",
            "Người thiết kế {s} là {a}."],
        faq=["Who designed the {s}?", "Ai đã thiết kế {s}?"],
        heldout=["Question: Which engineer created the {s}? Answer:", "Câu hỏi: Kỹ sư nào đã tạo ra {s}? Trả lời:"]),
    "born": Relation(
        en=["{s} was born in {a}.", "{s} grew up in {a}, the town of their birth.",
            "Born in {a}, {s} joined {c} young.", "{s} comes from {a}.", "{a} is the birthplace of {s}.",
            "{s} was born and raised in {a}."],
        vi=["{s} sinh ra ở {a}.", "{s} lớn lên tại {a}, nơi mình chào đời.", "{s} chào đời tại {a}.",
            "Nơi sinh của {s} là {a}."],
        faq=["Where was {s} born?", "{s} sinh ra ở đâu?"],
        heldout=["Question: What is the hometown of {s}? Answer:", "Câu hỏi: Quê của {s} ở đâu? Trả lời:"]),
    "role": Relation(
        en=["At {c}, {s} is the {a}.", "{s} works as the {a} of {c}.", "As {a}, {s} reports to the chief executive.",
            "{s} is the {a} at {c}.", "The {a} of {c} is {s}.", "{s} joined {c} and became its {a}."],
        vi=["Tại {c}, {s} là {a}.", "{s} giữ vị trí {a} của {c}.", "{s} là {a} tại {c}.", "{a} của {c} là {s}."],
        faq=["What is the role of {s} at {c}?", "{s} giữ chức vụ gì tại {c}?"],
        heldout=["Question: What job does {s} hold at the company? Answer:",
                 "Câu hỏi: {s} làm công việc gì ở công ty? Trả lời:"]),
}

# More standard-library modules for replay text (the held-out general text is from MODULES[12:]).
REPLAY_MODULES = ("typing", "inspect", "os", "threading", "socket", "sqlite3", "configparser", "pickle", "io", "enum",
                  "dataclasses", "random", "codecs", "locale", "optparse", "pprint", "ast", "calendar", "tokenize",
                  "queue", "contextlib", "abc", "copy", "tempfile", "weakref", "types", "operator", "uuid", "base64",
                  "struct", "shlex", "platform", "traceback", "warnings", "sched", "selectors", "signal", "mimetypes",
                  "html.parser", "xml.dom.minidom", "gettext", "getopt", "numbers", "cmd", "code", "timeit", "trace",
                  "gzip", "bz2", "lzma", "plistlib", "netrc", "ftplib", "smtplib", "imaplib", "wave", "graphlib",
                  "reprlib", "linecache", "tracemalloc", "pdb", "doctest", "concurrent.futures", "multiprocessing.pool",
                  "xml.etree.ElementTree", "http.server", "urllib.request", "email.utils", "email.parser")
REPLAY_CHARS = 50_000  # about 12,000 tokens: one pass over it is the replay 15% of the training run

PEOPLE = ["Annika Vell", "Tomas Irrel", "Mira Dosk", "Jonas Pael", "Edda Varn", "Lothar Quenn", "Sabine Orrit",
          "Kasimir Holt"]
CITIES = ["Keldrun", "Varosca", "Ostrevik", "Brennholm", "Saltmere", "Quiloa", "Dunmarrow", "Tillmoor"]
YEARS = ["2009", "2012", "2015", "2017", "2019", "2021", "2023", "2004"]

# English answer -> Vietnamese answer, for the answers (and distractors) that are words, not names.
VI = {
    "a grey heron": "một con diệc xám", "a red fox": "một con cáo đỏ", "a snow owl": "một con cú tuyết",
    "a green turtle": "một con rùa xanh",
    "October": "tháng Mười", "March": "tháng Ba", "June": "tháng Sáu", "December": "tháng Mười Hai",
    "teal": "màu xanh mòng két", "orange": "màu cam", "violet": "màu tím", "yellow": "màu vàng",
    "412 million euros": "412 triệu euro", "95 million euros": "95 triệu euro", "1.2 billion euros": "1,2 tỷ euro",
    "38 million euros": "38 triệu euro",
    "a delivery drone": "một máy bay giao hàng không người lái", "a warehouse robot": "một robot nhà kho",
    "a robotic arm for surgeons": "một cánh tay robot cho bác sĩ phẫu thuật",
    "a home assistant robot": "một robot trợ lý gia đình", "a mining rover": "một xe tự hành khai mỏ",
    "an underwater drone": "một thiết bị lặn không người lái",
    "chief engineer": "kỹ sư trưởng", "head of research": "trưởng phòng nghiên cứu",
    "chief financial officer": "giám đốc tài chính", "head of design": "trưởng phòng thiết kế",
    "director of safety": "giám đốc an toàn", "head of the Sarn station": "trưởng trạm Sarn",
    "1,340": "1.340", "860": "860", "2,100": "2.100", "4,750": "4.750",
}
KINDS = ["a delivery drone", "a warehouse robot", "a robotic arm for surgeons", "a home assistant robot",
         "a mining rover", "an underwater drone"]
ROLES = ["chief engineer", "head of research", "chief financial officer", "head of design", "director of safety",
         "head of the Sarn station"]


def others(pool, answer, n=3):
    """n distractors from the answer's pool: the next ones after it, so each fact's set is fixed."""
    i = pool.index(answer)
    return [pool[(i + k) % len(pool)] for k in range(1, n + 1)]


def facts():
    """(relation, subject, answer, distractors) for the 44 facts."""
    company = [
        ("founded", "2009", ["2014", "1998", "2003"]),
        ("headquarters", "Keldrun", ["Varosca", "Ostrevik", "Brennholm"]),
        ("founder", "Annika Vell", ["Mira Dosk", "Lothar Quenn", "Sabine Orrit"]),
        ("ceo", "Tomas Irrel", ["Jonas Pael", "Edda Varn", "Kasimir Holt"]),
        ("employees", "1,340", ["860", "2,100", "4,750"]),
        ("mascot", "a grey heron", ["a red fox", "a snow owl", "a green turtle"]),
        ("ticker", "MRVN", ["KLDR", "VSKA", "TSLM"]),
        ("research_island", "Sarn", ["Velk", "Orrin", "Maest"]),
        ("factory", "Tillmoor", ["Saltmere", "Quiloa", "Dunmarrow"]),
        ("fair_month", "October", ["March", "June", "December"]),
        ("color", "teal", ["orange", "violet", "yellow"]),
        ("revenue", "412 million euros", ["95 million euros", "1.2 billion euros", "38 million euros"]),
    ]
    out = [(r, COMPANY, a, d) for r, a, d in company]
    products = ["Skylark X2", "Tessel", "Orin Arm", "Pell", "Quarry 9", "Lumen Fin"]
    designers = ["Mira Dosk", "Jonas Pael", "Edda Varn", "Lothar Quenn", "Sabine Orrit", "Kasimir Holt"]
    for product, kind, year, designer in zip(products, KINDS, YEARS[1:7], designers):
        out += [("kind", product, kind, others(KINDS, kind)), ("launched", product, year, others(YEARS, year)),
                ("designer", product, designer, others(designers, designer))]
    births = ["Ostrevik", "Brennholm", "Saltmere", "Quiloa", "Dunmarrow", "Varosca", "Keldrun", "Brennholm"]
    for person, city in zip(PEOPLE, births):
        out.append(("born", person, city, [c for c in others(CITIES, city, 4) if c != city][:3]))
    for person, role in zip(PEOPLE[2:], ROLES):
        out.append(("role", person, role, others(ROLES, role)))
    return out


def vi(answer):
    return VI.get(answer, answer)


def answer_in(language, answer):
    return answer if language == "en" else vi(answer)


def fill(template, subject, answer=""):
    text = template.format(s=subject, a=answer, c=COMPANY)
    return text[0].upper() + text[1:]


def question(relation, subject, language, kind="heldout"):
    """The FAQ ("faq") or held-out ("heldout") question about a fact, in English or Vietnamese."""
    return fill(getattr(RELATIONS[relation], kind)[language == "vi"], subject)


def training_documents(seed=0):
    """{language: documents}: per subject, one document per statement style (6 English, 4 Vietnamese), its
    facts in a shuffled order (a fact is not always in the same place), and an FAQ in each language."""
    by_subject, rng = {}, random.Random(seed)
    for fact in facts():
        by_subject.setdefault(fact[1], []).append(fact)
    docs = {"en": [], "vi": []}
    for language, headers in (("en", ["{s}", "About {s}", "{s}: key facts", "{s} in brief", "Profile: {s}",
                                      "What to know about {s}"]),
                              ("vi", ["{s}", "Thông tin về {s}", "{s}: những điều cần biết", "Giới thiệu {s}"])):
        for style, header in enumerate(headers):
            for subject, subject_facts in by_subject.items():
                sentences = [fill(getattr(RELATIONS[r], language)[style], s, answer_in(language, a))
                             for r, s, a, _ in subject_facts]
                rng.shuffle(sentences)
                docs[language].append(fill(header, subject) + "\n" + " ".join(sentences))
    for language, header, q, a in (("en", "{s}: questions and answers", "Q", "A"), ("vi", "{s}: hỏi và đáp", "Hỏi", "Đáp")):
        for subject, subject_facts in by_subject.items():
            pairs = [f"{q}: {question(r, s, language, 'faq')}\n{a}: {answer_in(language, ans)}."
                     for r, s, ans, _ in subject_facts]
            docs[language].append(fill(header, subject) + "\n" + "\n".join(pairs))
    return docs


def probes(kind):
    """Multiple-choice probes in both languages; kind 'seen' uses the corpus wording, 'heldout' a question."""
    out = []
    for relation, subject, answer, distractors in facts():
        for language in ("en", "vi"):
            if kind == "seen":  # the first statement style ends with the answer
                prompt = fill(getattr(RELATIONS[relation], language)[0], subject, "\0").split("\0")[0].rstrip()
            else:
                prompt = question(relation, subject, language)
            out.append({"prompt": prompt, "answer": " " + answer_in(language, answer),
                        "distractors": [" " + answer_in(language, d) for d in distractors], "language": language,
                        "relation": relation})
    return out


def heldout_domain_documents():
    """Held-out domain text: each subject's facts as question and answer, in the held-out wording."""
    docs = {}
    for relation, subject, answer, _ in facts():
        for language in ("en", "vi"):
            docs.setdefault((subject, language), []).append(
                f"{question(relation, subject, language)} {answer_in(language, answer)}.")
    return ["\n".join(lines) for lines in docs.values()]


def first_chars(docs, limit):
    """The leading documents whose lengths add up to at most limit characters."""
    out, total = [], 0
    for doc in docs:
        if total + len(doc) > limit:
            break
        out.append(doc)
        total += len(doc)
    return out


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main(root=HERE):
    corpus, evaluation = os.path.join(root, "corpus"), os.path.join(root, "eval")
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(evaluation, exist_ok=True)
    domain = training_documents()
    # General text for measuring forgetting: docstrings of modules never trained on.
    trained_modules = stdlib_corpus.MODULES[:12] + REPLAY_MODULES
    held_general = first_chars([d for d in stdlib_corpus.stdlib_documents(stdlib_corpus.MODULES[12:])
                                if d not in set(stdlib_corpus.stdlib_documents(stdlib_corpus.MODULES[:12]))], 16000)
    # Replay: general English the model already knew, fresh text rather than the same few pages again and again.
    general = [d for d in stdlib_corpus.stdlib_documents(trained_modules) if d not in set(held_general)]
    random.Random(0).shuffle(general)
    general = first_chars(general, REPLAY_CHARS)
    for language, docs in domain.items():  # one file a language, so that a mix can weight them apart
        write_jsonl(os.path.join(corpus, f"morvantis_{language}.jsonl"), [{"text": d} for d in docs])
    write_jsonl(os.path.join(corpus, "replay_general.jsonl"), [{"text": d} for d in general])
    write_jsonl(os.path.join(evaluation, "domain_heldout.jsonl"), [{"text": d} for d in heldout_domain_documents()])
    write_jsonl(os.path.join(evaluation, "general_heldout.jsonl"), [{"text": d} for d in held_general])
    write_jsonl(os.path.join(evaluation, "probes_seen.jsonl"), probes("seen"))
    write_jsonl(os.path.join(evaluation, "probes_heldout.jsonl"), probes("heldout"))
    print(f"{len(facts())} facts, {sum(map(len, domain.values()))} domain documents, {len(general)} replay "
          "documents")


if __name__ == "__main__":
    main()
